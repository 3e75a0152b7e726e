"""Flat-buffer execution of a whole chain: one contiguous buffer per dtype (the speed path).

An update rule written leaf by leaf costs one kernel (or more) per leaf; a model with a
thousand small leaves (per-channel scales and biases) spends its optimizer step on launch and
bookkeeping overhead, not on arithmetic. The flat layout packs the leaves into one 1-D buffer
per group (a group is a dtype, or a label from ``group_by`` and a dtype) as
`dlopt.core.flat.Buffers`, keeps the chain's state over those buffers, and runs the chain
once per buffer: one fused elementwise pass, and global-norm clipping as one reduction.

Two ways to use it: ``dlopt.fused(tx)``, a drop-in `GradientTransformation` on trees (the
gradients are packed and the updates unpacked at the edges of every step), or a
`dlopt.training.TrainState` in the flat layout (its default where `prefers_flat` holds), whose
params stay packed between steps.

Every transform means the same in both layouts:

* elementwise rules and whole-tree reductions (global norm) are the same arithmetic, up to
  float summation order;
* masks, `dlopt.partition` labels, `dlopt.weights_only` and `dlopt.path_labels` are evaluated
  on the params tree and mapped onto the buffers; `plan_layout` gives leaves with different
  mask values different buffers, so the map is exact;
* transforms that read a leaf's shape or treat leaves separately (Muon, SOAP, Adafactor,
  block-wise clipping, trust ratios, per-leaf noise, ...) carry the `dlopt.per_leaf` marker
  and run on the params tree (slices of the buffers), with their state in the tree's shapes.

Not vouched for: optax transforms (found by their state classes) may read shapes; a
`TrainState` keeps them in the tree layout, and ``flat=True`` with one is refused. Stochastic
rounding of narrow moment dtypes hashes the element index within its buffer, so a flat and a
tree run draw different (equally unbiased) roundings.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)
from dlopt.core.flat import (
    PACK_BELOW,
    Buffers,
    GroupBy,
    Layout,
    layout_of,
    pack,
    probing,
)

FLAT_MIN_SMALL_LEAVES = 2


def prefers_flat(params: Any) -> bool:
    """Whether the flat layout is expected to be faster for ``params``: when at least 2
    leaves are below `PACK_BELOW` elements (so packing saves per-leaf work). From the
    train-step benchmark on 2 CPU cores (Adam, defaults on), flat was never measurably slower
    and often faster: the demo's 6-leaf MLP 1.48x, the 4x100 BatchNorm MLP 1.11x, the small
    CNN 1.04x, the 194-leaf residual MLP 1.82x; the 3x1024 MLP (its weights are 4 large
    leaves, which keep their own buffers) 0.997x."""
    small = [x for x in jax.tree.leaves(params) if np.size(x) < PACK_BELOW]
    return len(small) >= FLAT_MIN_SMALL_LEAVES


class Plan(NamedTuple):
    """What `plan_layout` found: the layout, and whether ``tx`` is fit for it.

    ``per_leaf``: a `dlopt.per_leaf` part runs leaf by leaf (exact, but not one fused pass);
    ``foreign``: the names of optax state classes in ``tx``'s state (transforms the layout
    cannot vouch for); ``error``: why ``tx`` cannot start on the buffers, or None.
    """

    layout: Layout
    per_leaf: bool
    foreign: tuple[str, ...]
    error: str | None

    @property
    def elementwise(self) -> bool:
        """Whether the whole chain runs as fused passes over the buffers."""
        return not (self.per_leaf or self.foreign or self.error)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _foreign_classes(state: Any) -> tuple[str, ...]:
    found: set[str] = set()

    def visit(node: Any) -> bool:
        cls = type(node)
        if (cls.__module__ or "").split(".")[0] == "optax":
            found.add(f"optax {cls.__name__}")
        return False

    jax.tree.flatten(state, is_leaf=visit)
    return tuple(sorted(found))


def _init_on(tx: GradientTransformation, layout: Layout):
    def init(params):
        return tx.init(Buffers(pack(params, layout), layout))

    return init


def plan_layout(
    params: Any,
    tx: GradientTransformation,
    *,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
    pad_to: int = 1,
) -> Plan:
    """The flat layout of ``params`` for ``tx``: one buffer per (label, dtype) and per
    combination of the mask/label values ``tx``'s masks give a leaf.

    A probe runs ``tx.init`` abstractly (`jax.eval_shape`) on a first layout, recording each
    mask's per-leaf values; the leaves are then regrouped so that no buffer mixes values.

    Returns:
        A `Plan`.
    """
    abstract = _abstract(params)
    layout = layout_of(abstract, group_by, pack_below, pad_to)
    error = None
    with probing() as probe:
        try:
            jax.eval_shape(_init_on(tx, layout), abstract)
        except Exception as err:  # noqa: BLE001 - reported in the plan
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if error is None and probe.values:
        parts = list(zip(*probe.values, strict=True))
        layout = layout_of(abstract, group_by, pack_below, pad_to, parts=parts)
        try:
            jax.eval_shape(_init_on(tx, layout), abstract)
        except ValueError as err:
            error = f"ValueError: {str(err).splitlines()[0]}"
    try:
        foreign = _foreign_classes(jax.eval_shape(tx.init, abstract))
    except Exception:  # noqa: BLE001 - a tx that cannot start on the tree either
        foreign = ()
    return Plan(layout, probe.per_leaf, foreign, error)


class FusedState(NamedTuple):
    """The wrapped transform's state over the buffers `dlopt.core.flat.Buffers`."""

    inner: Any


def fused(
    tx: GradientTransformation,
    *,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
) -> GradientTransformationExtraArgs:
    """Runs ``tx`` over one contiguous buffer per dtype instead of one array per leaf.

    .. math::
        b = \\operatorname{concat}(\\operatorname{vec}(g_1), \\ldots, \\operatorname{vec}(g_n)),
        \\quad (u_b, s) = tx.update(b, s, \\operatorname{concat}(w_1, \\ldots, w_n)),
        \\quad u_i = u_b[o_i : o_i + |g_i|]

    per group of leaves of one label and dtype. For elementwise rules this is the same
    arithmetic as ``tx`` itself, done in one pass; the state (e.g. Adam's ``mu`` and ``nu``)
    is one buffer per group. Trees in, trees out; masks, labels and `dlopt.per_leaf`
    transforms inside ``tx`` mean what they mean on the tree (see the module docstring).
    Inside a flat `dlopt.training.TrainState` (already buffers) it is ``tx`` itself.

    Args:
        tx: any transform (usually an optimizer chain).
        group_by: None (one buffer per dtype), or per-leaf labels (a pytree shaped like the
            params, or a callable ``params -> labels``): leaves with different labels get
            separate buffers.
        pack_below: leaves of at least this many elements (default 65536) are not copied
            into the shared buffer but keep one of their own, updated in their own shape
            (so a donated parameter and its state are updated in place); None packs all.

    Returns:
        A `GradientTransformationExtraArgs` with state `FusedState`; extra keyword arguments
        of ``update`` (``value=``) reach ``tx``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.fused(dlopt.adam(1e-3))
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> state.inner[0].mu["params"]["float32"].shape
        (6,)
        >>> updates, state = tx.update(params, state, params)
        >>> updates["w"].shape
        (2, 2)

    References:
        The "flat parameter" layout of PyTorch's ``foreach``/``fused`` optimizers and FSDP.
    """
    inner = with_extra_args_support(tx)
    plans: dict[Hashable, Layout] = {}

    def layout_for(tree: Any) -> Layout:
        abstract = _abstract(tree)
        key = (jax.tree.structure(abstract), tuple(jax.tree.leaves(abstract)))
        if key not in plans:
            plan = plan_layout(abstract, tx, group_by=group_by, pack_below=pack_below)
            plans[key] = plan.layout
        return plans[key]

    def buffers(tree: Any, layout: Layout) -> Buffers:
        return Buffers(pack(tree, layout, keep_own_shapes=True), layout)

    def init_fn(params):
        if isinstance(params, Buffers):  # already flat (a flat TrainState's): run as it is
            return FusedState(inner.init(params))
        return FusedState(inner.init(buffers(params, layout_for(params))))

    def update_fn(updates, state, params=None, **extra_args):
        if isinstance(updates, Buffers):
            new, inner_state = inner.update(updates, state.inner, params, **extra_args)
            return new, FusedState(inner_state)
        layout = layout_for(updates if params is None else params)
        new, inner_state = inner.update(
            buffers(updates, layout),
            state.inner,
            None if params is None else buffers(params, layout),
            **extra_args,
        )
        dtypes = [jnp.result_type(u) for u in layout.treedef.flatten_up_to(updates)]
        return new.unflatten(dtypes), FusedState(inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)
