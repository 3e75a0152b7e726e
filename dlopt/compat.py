"""``python -m dlopt.compat``: optax's public API next to dlopt's, name by name.

Introspects the installed optax (imported here lazily, only when this check runs; dlopt itself
never imports optax) module by module, and prints the names dlopt lacks at the same path and
the callables it signs differently: a parameter optax has that dlopt lacks, renames, makes
keyword-only or moves, a default that differs, or a dlopt-only parameter without a default.
A dlopt-only parameter with a default is fine (optax calls still work). For state NamedTuples
the fields are compared. `DELIBERATE` lists the differences kept on purpose, printed as a
table and not counted. Exit code 0 when nothing is missing or mis-signed, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import sys
import types
from typing import Any

MODULES = (
    "",
    "contrib",
    "transforms",
    "schedules",
    "losses",
    "tree",
    "tree_utils",
    "projections",
    "microbatching",
    "perturbations",
    "assignment",
    "second_order",
)

# (module, name) -> the reason the difference is kept; module "" is the top level.
DELIBERATE: dict[tuple[str, str], str] = {
    ("", "experimental"): "optax.experimental (aggregating) is not part of the stable API",
    ("", "InjectStatefulHyperparamsState"): (
        "dlopt's inject state has one more field, schedule_scales (set_schedule_scale)"
    ),
    ("schedules", "InjectStatefulHyperparamsState"): "as at the top level",
    ("", "InjectHyperparamsState"): (
        "one state for plain and stateful injection: optax's fields, then hyperparams_states "
        "(before inner_state, as in optax's InjectStatefulHyperparamsState) and schedule_scales"
    ),
    ("schedules", "InjectHyperparamsState"): "as at the top level",
    ("", "ScaleByRmsState"): (
        "count first (bias correction, schedules, stochastic rounding); reordering the fields "
        "would break saved checkpoints"
    ),
    ("", "ScaleByRStdDevState"): "as ScaleByRmsState",
    ("", "scale_by_learning_rate"): (
        "learning_rate is required: optax's default None silently turns it into identity()"
    ),
    ("", "AddDecayedWeightsState"): (
        "a class with count (a scheduled weight_decay's step), EmptyState for a constant one"
    ),
}


@dataclasses.dataclass
class Report:
    """What `check` found: ``missing`` paths (``dlopt.X``), ``mismatched`` path -> the
    differences, ``deliberate`` path -> reason (found, but on purpose)."""

    missing: list[str] = dataclasses.field(default_factory=list)
    mismatched: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    deliberate: dict[str, str] = dataclasses.field(default_factory=dict)
    counted: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched


def _import_optax() -> types.ModuleType:
    try:
        return importlib.import_module("optax")
    except ImportError:
        raise SystemExit(
            "dlopt.compat needs optax installed to compare against: pip install optax"
        ) from None


def _path(package: str, module: str, name: str = "") -> str:
    return ".".join(p for p in (package, module, name) if p)


def public_names(module: types.ModuleType) -> list[str]:
    """The public names of an optax module: what ``dir`` shows without a leading underscore,
    less the modules it merely imported (``functools``); its public submodules count."""
    names = []
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, types.ModuleType) and not value.__name__.startswith(
            module.__name__ + "."
        ):
            continue
        names.append(name)
    return sorted(names)


def _same_default(a: Any, b: Any) -> bool:
    """Whether dlopt's default ``a`` stands for optax's ``b``: the same value, the same enum
    member or transform type, an instance of a class of the same name with the same fields,
    a function of the same name (any function where optax's is a lambda)."""
    if a is b:
        return True
    if isinstance(a, enum.Enum) and isinstance(b, enum.Enum):
        return type(a).__name__ == type(b).__name__ and a.name == b.name
    if callable(a) and callable(b) and hasattr(b, "__qualname__"):  # a function by its name
        return "<lambda>" in b.__qualname__ or getattr(a, "__qualname__", None) == b.__qualname__
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        same_type = type(a).__name__ == type(b).__name__
        if same_type and type(a).__name__.startswith("GradientTransformation"):
            return True  # a default transform: its functions are closures of other names
        return same_type and all(_same_default(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dict__") and hasattr(b, "__dict__") and not isinstance(a, type):
        return type(a).__name__ == type(b).__name__ and vars(a) == vars(b)
    try:
        return (
            bool(a == b)
            and type(a) is type(b)
            or (isinstance(a, int | float) and isinstance(b, int | float) and float(a) == float(b))
        )
    except Exception:  # arrays, dtypes: compare their printed form
        return repr(a) == repr(b)


_KIND = {
    inspect.Parameter.POSITIONAL_ONLY: "positional-only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional or keyword",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.KEYWORD_ONLY: "keyword-only",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


def _positional(sig: inspect.Signature) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


def signature_differences(ours: Any, theirs: Any) -> list[str]:
    """How ``ours`` (dlopt) is signed differently from ``theirs`` (optax); [] when an optax
    call works unchanged with the same meaning of each argument."""
    if _is_namedtuple(theirs):
        if not _is_namedtuple(ours):
            return [f"optax's is a NamedTuple with fields {theirs._fields}, dlopt's is not"]
        if tuple(ours._fields[: len(theirs._fields)]) != tuple(theirs._fields):
            return [f"fields {ours._fields}, optax's {theirs._fields}"]
        extra = [f for f in ours._fields[len(theirs._fields) :] if f not in ours._field_defaults]
        return [f"extra field {f!r} without a default" for f in extra]
    if isinstance(theirs, type) and issubclass(theirs, _protocol_base()):
        return []
    try:
        sig_t = inspect.signature(theirs)
    except (TypeError, ValueError):
        return []
    try:
        sig_o = inspect.signature(ours)
    except (TypeError, ValueError):
        return ["dlopt's has no signature to compare"]
    diffs = []
    params_o = sig_o.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params_o.values())
    pos_t, pos_o = _positional(sig_t), _positional(sig_o)
    for name, p in sig_t.parameters.items():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:  # *args: its name does not matter
            if not any(q.kind is p.kind for q in params_o.values()):
                diffs.append(f"takes no *{name}")
            continue
        q = params_o.get(name)
        if q is None:
            if not (takes_kwargs and p.kind is inspect.Parameter.KEYWORD_ONLY):
                diffs.append(f"lacks parameter {name!r}")
            continue
        if p.kind is not q.kind and not (
            p.kind is inspect.Parameter.KEYWORD_ONLY
            and q.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            diffs.append(f"{name!r} is {_KIND[q.kind]} (optax: {_KIND[p.kind]})")
        elif name in pos_t and pos_t.index(name) != pos_o.index(name):
            diffs.append(f"{name!r} at position {pos_o.index(name)} (optax: {pos_t.index(name)})")
        if p.default is not inspect.Parameter.empty:
            if q.default is inspect.Parameter.empty:
                diffs.append(f"{name!r} has no default (optax: {p.default!r})")
            elif not _same_default(q.default, p.default):
                diffs.append(f"{name!r} defaults to {q.default!r} (optax: {p.default!r})")
    for name, q in params_o.items():
        if name in sig_t.parameters or q.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            continue
        if q.default is inspect.Parameter.empty:
            diffs.append(f"dlopt-only parameter {name!r} has no default")
    return diffs


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, type) and issubclass(x, tuple) and hasattr(x, "_fields")


def _protocol_base() -> type:
    import typing

    return typing.Protocol  # type: ignore[return-value]


def _is_signed(x: Any) -> bool:
    return inspect.isfunction(x) or inspect.isclass(x) or isinstance(x, types.BuiltinFunctionType)


def check(modules: tuple[str, ...] = MODULES) -> Report:
    """Compares every public name of each optax module in ``modules`` with dlopt's at the
    same path. A dlopt module that does not exist makes all of its names missing."""
    optax = _import_optax()
    report = Report()
    for module in modules:
        theirs_mod = importlib.import_module(_path("optax", module))
        try:
            ours_mod: types.ModuleType | None = importlib.import_module(_path("dlopt", module))
        except ImportError:
            ours_mod = None
        names = public_names(theirs_mod)
        report.counted[_path("optax", module)] = len(names)
        for name in names:
            path = _path("dlopt", module, name)
            if (module, name) in DELIBERATE:
                report.deliberate[path] = DELIBERATE[(module, name)]
                continue
            if ours_mod is None or not hasattr(ours_mod, name):
                report.missing.append(path)
                continue
            theirs, ours = getattr(theirs_mod, name), getattr(ours_mod, name)
            if isinstance(theirs, types.ModuleType) or not _is_signed(theirs):
                continue
            diffs = signature_differences(ours, theirs)
            if diffs:
                report.mismatched[path] = diffs
    del optax
    return report


def format_report(report: Report) -> str:
    optax = _import_optax()
    lines = [f"optax {optax.__version__} public API vs dlopt"]
    for module, n in report.counted.items():
        lines.append(f"  {module}: {n} names")
    lines.append(f"missing in dlopt: {len(report.missing)}")
    lines += [f"  {p}" for p in report.missing]
    lines.append(f"signed differently: {len(report.mismatched)}")
    for p, diffs in report.mismatched.items():
        lines.append(f"  {p}: " + "; ".join(diffs))
    lines.append("deliberate differences (not counted):")
    lines.append("| name | reason |")
    lines.append("|---|---|")
    lines += [f"| {p} | {reason} |" for p, reason in report.deliberate.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    modules = tuple(argv) if argv else MODULES
    report = check(modules)
    print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
