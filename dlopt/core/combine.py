"""Composing transforms: `chain`, `named_chain`, `masked` and `partition` (parameter groups),
and `path_labels`, which names the groups by regular expressions over parameter paths."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import chex
import jax

from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)
from dlopt.core.flat import Buffers


def _check_params(updates: chex.ArrayTree, params: chex.ArrayTree | None) -> None:
    if params is not None:
        tree_lib.check_matching_trees(params, updates, "params", "updates")


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Applies ``transforms`` in order: ``u <- t_n(... t_2(t_1(g)))``; state is a tuple.

    Extra keyword arguments of ``update`` (e.g. ``value=`` for `reduce_on_plateau`) reach
    the transforms whose ``update`` accepts keyword arguments. When ``params`` are given,
    their tree must match the updates' tree (a ``ValueError`` names the differing path), or
    the first transform's output must (`differentially_private_aggregate` first turns
    per-example gradients into the params' shapes).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.adam(1e-3))
        >>> updates, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> jnp.round(updates, 4)  # Adam's first step: -lr * sign(g)
        Array([-0.001, -0.001], dtype=float32)
    """
    wrapped = [with_extra_args_support(t) for t in transforms]

    def init_fn(params):
        params = tree_lib.as_arrays(params)  # Python-number leaves, as optax accepts them
        return tuple(t.init(params) for t in wrapped)

    def update_fn(updates, state, params=None, **extra_args):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        if len(state) != len(wrapped):
            raise ValueError(
                f"chain of {len(wrapped)} transforms got a state of {len(state)} entries; "
                "build the state with this chain's init(params)."
            )
        try:
            _check_params(updates, params)
            mismatch = None
        except ValueError as error:  # per-example grads: the first transform may reduce them
            mismatch = error
        new_state = []
        for t, s in zip(wrapped, state, strict=True):
            try:
                updates, s = t.update(updates, s, params, **extra_args)
            except Exception as error:
                if mismatch is not None:
                    raise mismatch from error
                raise
            if mismatch is not None:
                _check_params(updates, params)
                mismatch = None
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def named_chain(*named: tuple[str, GradientTransformation]) -> GradientTransformationExtraArgs:
    """Like `chain`, with the state a dict keyed by the given names (easy to inspect).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.named_chain(("clip", dlopt.clip(1.0)), ("opt", dlopt.sgd(0.1)))
        >>> state = tx.init(jnp.zeros(2))
        >>> list(state)
        ['clip', 'opt']
        >>> tx.update(jnp.array([5.0, -0.5]), state)[0]
        Array([-0.1 ,  0.05], dtype=float32)
    """
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain names must be unique, got {names}.")
    wrapped = {name: with_extra_args_support(t) for name, t in named}

    def init_fn(params):
        return {name: t.init(params) for name, t in wrapped.items()}

    def update_fn(updates, state, params=None, **extra_args):
        _check_params(updates, params)
        new_state = {}
        for name, t in wrapped.items():
            updates, new_state[name] = t.update(updates, state[name], params, **extra_args)
        return updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


class MaskedNode(NamedTuple):
    """Stands in for a leaf that a mask leaves out: an empty pytree node."""


class MaskedState(NamedTuple):
    inner_state: Any


MaskOrFn = chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree]  # optax's name
Mask = MaskOrFn


def resolve_mask(mask: Mask, tree: chex.ArrayTree) -> chex.ArrayTree:
    """``mask(tree)`` for a callable mask, else ``mask`` itself.

    A mask is callable when all its leaves are (a plain function is its own only leaf); a
    pytree of bools that is also callable (an equinox module) is used as a tree, as in optax.
    Over flat `dlopt.core.flat.Buffers` the mask is evaluated on the params tree they hold
    and mapped onto the buffers (`Buffers.translate`), so it means the same in both layouts.
    """
    if isinstance(tree, Buffers):
        return tree.translate(mask)
    leaves = jax.tree.leaves(jax.tree.map(callable, mask))
    return mask(tree) if leaves and all(leaves) else mask


def _hide(tree: chex.ArrayTree, mask: chex.ArrayTree) -> chex.ArrayTree:
    """Replaces the subtrees where ``mask`` is False by `MaskedNode`."""
    return jax.tree.map(lambda m, x: x if m else MaskedNode(), mask, tree)


def masked(
    inner: GradientTransformation,
    mask: Mask,
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Applies ``inner`` only where ``mask`` is True; other updates pass through unchanged.

    ``mask`` is a pytree of bools with the params' structure (or a prefix of it), or a
    callable ``params -> that pytree``. ``inner`` keeps state only for the selected leaves;
    with none selected (a `partition` label no leaf carries) it is not called. With
    ``mask_compatible_extra_args``, an extra argument with the updates' tree structure (a
    per-parameter value) is masked the same way before it reaches ``inner``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> only_weights = lambda p: {"w": True, "b": False}
        >>> tx = dlopt.masked(dlopt.add_decayed_weights(1e-4), only_weights)
        >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
        >>> zeros = {"w": jnp.zeros(2), "b": jnp.zeros(2)}
        >>> tx.update(zeros, tx.init(params), params)[0]
        {'b': Array([0., 0.], dtype=float32), 'w': Array([0.0001, 0.0001], dtype=float32)}
    """
    inner = with_extra_args_support(inner)

    def init_fn(params):
        if isinstance(params, tree_lib.ParamsPlaceholder):  # dlopt.tree.map_params's probe
            return MaskedState(inner.init(params))
        return MaskedState(inner.init(_hide(params, resolve_mask(mask, params))))

    def update_fn(updates, state, params=None, **extra_args):
        mask_tree = resolve_mask(mask, updates if params is None else params)
        hidden_updates = _hide(updates, mask_tree)
        if not jax.tree.leaves(hidden_updates):  # nothing selected (a partition's unused label)
            return updates, state
        hidden_params = None if params is None else _hide(params, mask_tree)
        if mask_compatible_extra_args:
            structure = jax.tree.structure(updates)
            extra_args = {
                k: _hide(v, mask_tree) if jax.tree.structure(v) == structure else v
                for k, v in extra_args.items()
            }
        new_updates, inner_state = inner.update(
            hidden_updates, state.inner_state, hidden_params, **extra_args
        )
        merged = jax.tree.map(
            lambda m, new, old: new if m else old, mask_tree, new_updates, updates
        )
        return merged, MaskedState(inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


class PartitionState(NamedTuple):
    inner_states: dict[Hashable, MaskedState]


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Different transforms for different parameter groups (torch's param groups).

    ``param_labels`` gives each leaf (or subtree) a key of ``transforms``, or is a callable
    ``params -> labels``. Each group's transform sees and keeps state for its leaves only.
    ``mask_compatible_extra_args``: as in `masked` (per-parameter extra arguments are split
    by group too).

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.partition(
        ...     {"body": dlopt.adam(1e-3), "head": dlopt.sgd(1e-2)},
        ...     lambda p: {k: "head" if k == "out" else "body" for k in p},
        ... )
        >>> params = {"hidden": jnp.zeros(2), "out": jnp.zeros(2)}
        >>> grads = {"hidden": jnp.ones(2), "out": jnp.ones(2)}
        >>> updates, _ = tx.update(grads, tx.init(params), params)
        >>> jax.tree.map(lambda u: jnp.round(u, 4), updates)
        {'hidden': Array([-0.001, -0.001], dtype=float32),
         'out': Array([-0.01, -0.01], dtype=float32)}
    """

    def masks(tree):
        labels = resolve_mask(param_labels, tree)
        present = set(jax.tree.leaves(labels))
        missing = present - set(transforms)
        if missing:
            raise ValueError(
                f"param_labels uses labels {sorted(map(str, missing))} that transforms lacks; "
                f"transforms has {sorted(map(str, transforms))}."
            )
        return {
            label: jax.tree.map(lambda lab, label=label: lab == label, labels)
            for label in transforms
        }

    groups = {label: with_extra_args_support(t) for label, t in transforms.items()}

    def _group(t, mask_tree):
        return masked(t, mask_tree, mask_compatible_extra_args=mask_compatible_extra_args)

    def init_fn(params):
        mask_by_label = masks(params)
        return PartitionState(
            {label: _group(t, mask_by_label[label]).init(params) for label, t in groups.items()}
        )

    def update_fn(updates, state, params=None, **extra_args):
        mask_by_label = masks(updates if params is None else params)
        new_states = {}
        for label, t in groups.items():
            updates, new_states[label] = _group(t, mask_by_label[label]).update(
                updates, state.inner_states[label], params, **extra_args
            )
        return updates, PartitionState(new_states)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def leaf_path(path: tuple) -> str:
    """A parameter's key path as `path_labels` matches it: ``"a/b/0/kernel"``
    (`tree.path_name`), a trailing nnx ``.value`` dropped."""
    return tree_lib.path_name(tree_lib.strip_wrappers(path))


def path_labels(
    params: chex.ArrayTree,
    rules: Mapping[str, Hashable],
    default: Hashable | None = None,
) -> chex.ArrayTree:
    """Labels each leaf of ``params`` by the first regular expression that matches its path.

    A leaf's path is its keys joined by "/" (see `leaf_path`): in the Flax linen params
    ``{"backbone": {"Conv_0": {"kernel": w}}}`` the kernel is ``"backbone/Conv_0/kernel"``
    (an nnx state gives the same, without the ``.value``). ``rules`` maps patterns to labels;
    they are tried in their order with `re.search` (so ``"kernel"`` matches anywhere; anchor
    with ``^`` and ``$``) and **the first pattern that matches wins**. Leaves that no pattern
    matches get ``default``; with no default they are an error.

    The result has the params' structure with a label per leaf: the ``param_labels`` of
    `partition` (or ``optax.partition``), the ``group_by`` of `dlopt.fused`, or, with labels
    ``True``/``False``, the mask of `masked`.

    Args:
        params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``; only paths are read).
        rules: ``{pattern: label}``; labels must be hashable and not None.
        default: the label of leaves no pattern matches; None makes those an error.

    Returns:
        A pytree of labels shaped like ``params``.

    Raises:
        ValueError: a pattern that does not compile, a None or unhashable label, or (with no
            default) leaves that no pattern matches, named by path.

    Example:
        Freeze a pretrained backbone, train the rest with Adam:

        >>> import jax.numpy as jnp, dlopt
        >>> params = {"backbone": {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))}},
        ...           "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}
        >>> labels = dlopt.path_labels(params, {"^backbone/": "frozen"}, default="train")
        >>> labels["backbone"]["Conv_0"]["kernel"], labels["head"]["bias"]
        ('frozen', 'train')
        >>> tx = dlopt.partition(
        ...     {"frozen": dlopt.set_to_zero(), "train": dlopt.adam(1e-3)},
        ...     dlopt.path_labels(params, {"^backbone/": "frozen"}, default="train"),
        ... )

        Or fine-tune it at a 10x lower learning rate:

        >>> tx = dlopt.partition(
        ...     {"backbone": dlopt.adam(1e-4), "head": dlopt.adam(1e-3)},
        ...     dlopt.path_labels(params, {"^backbone/": "backbone", "^head/": "head"}),
        ... )

        For a labelling that follows whatever params it is given, pass a callable:
        ``lambda p: dlopt.path_labels(p, rules, default="train")``.
    """
    if not isinstance(rules, Mapping):
        raise TypeError(f"rules must be a mapping {{pattern: label}}, got {type(rules).__name__}.")
    compiled = []
    for pattern, label in rules.items():
        if not isinstance(pattern, str):
            raise TypeError(f"rules patterns must be strings, got {pattern!r}.")
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"rules pattern {pattern!r} is not a regular expression: {e}."
            ) from None
        _check_label(label, f"the label of pattern {pattern!r}")
        compiled.append((regex, label))
    if default is not None:
        _check_label(default, "default")
    unmatched: list[str] = []

    def label_of(path, leaf):
        name = leaf_path(path)
        for regex, label in compiled:
            if regex.search(name):
                return label
        if default is None:
            unmatched.append(name)
        return default

    labels = jax.tree_util.tree_map_with_path(label_of, params)
    if unmatched:
        shown = ", ".join(repr(p) for p in unmatched[:5])
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        raise ValueError(
            f"no pattern of rules matches the leaves {shown}{more} (patterns "
            f"{list(rules)}); add a pattern or pass default=."
        )
    return labels


def _check_label(label: Any, what: str) -> None:
    if label is None:
        raise TypeError(f"{what} is None; a label must be a hashable value such as a string.")
    try:
        hash(label)
    except TypeError:
        raise TypeError(f"{what} must be hashable, got {label!r}.") from None


multi_transform = partition  # optax's deprecated name for `partition`, kept for its users
MultiTransformState = PartitionState
