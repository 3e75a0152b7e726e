"""Argument checks shared by the ``dlopt`` command and ``python -m benchmarks``.

Each check runs before any work: a parser whose errors are one line (exit status 2), output
folders and figure paths tested for writability without creating anything, and optional
dependencies (the ``flax``, ``data`` and ``plots`` extras) looked up without importing them.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, ``PROG: error: ... (see --help)``,
    and exits with status 2 (the benchmarks' parser uses it too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """A bad command-line value found after parsing; printed as one line, exit status 2."""


def _probe_writable(folder: str) -> bool:
    """Whether a folder can be created in ``folder`` (tried, then removed: ``os.access``
    says yes to root on read-only mounts and /proc)."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".dlopt_probe_", dir=folder))
    except OSError:
        return False
    return True


def output_folder_error(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an output folder (empty, an existing file, not writable, under a
    file), or None when it can: it exists as a writable folder or can be created. Creates
    nothing."""
    text = os.fspath(path)
    if not text.strip():
        return "needs a folder path, got an empty one"
    full = os.path.abspath(text)
    if os.path.exists(full):
        if not os.path.isdir(full):
            return f"{text!r} is an existing file, not a folder"
        return None if _probe_writable(full) else f"cannot write in the folder {text!r}"
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot create {text!r}: {parent!r} is a file, not a folder"
    if not _probe_writable(parent):
        return f"cannot create {text!r}: no write permission in {parent!r}"
    return None


def output_file_error(path: str | os.PathLike, formats: Sequence[str] = ()) -> str | None:
    """Why ``path`` cannot be written as a figure (empty, a folder, an extension not in
    ``formats`` when given, its folder not creatable), or None."""
    text = os.fspath(path)
    if not text.strip():
        return "needs a file path, got an empty one"
    if os.path.isdir(text):
        return f"{text!r} is a folder; give a file name such as {os.path.join(text, 'x.png')!r}"
    ext = os.path.splitext(text)[1].lower().lstrip(".")
    if formats and ext not in formats:
        shown = f"the extension .{ext}" if ext else "no extension"
        return f"cannot draw {text!r}: {shown} is no image format; use .png, .pdf or .svg"
    folder = os.path.dirname(os.path.abspath(text))
    problem = output_folder_error(folder)
    return None if problem is None else f"cannot write {text!r}: {problem}"


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Raises `UsageError` naming ``option`` when ``path`` is no usable output folder."""
    problem = output_folder_error(path)
    if problem is not None:
        raise UsageError(f"{option} {problem}.")


def importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(command: str, *modules: tuple[str, str]) -> None:
    """Raises `UsageError` naming the extra to install for the first missing module."""
    for module, extra in modules:
        if not importable(module):
            raise UsageError(
                f"{command} needs {module}, which is not installed: pip install 'dlopt[{extra}]'."
            )


def figures_available(command: str) -> bool:
    """True when matplotlib imports; otherwise says, once, that no figures will be drawn."""
    if importable("matplotlib"):
        return True
    print(
        f"dlopt {command}: matplotlib is not installed, so no figures; "
        "pip install 'dlopt[plots]' to draw them.",
        file=sys.stderr,
    )
    return False


def image_formats() -> list[str]:
    """The file extensions matplotlib can write (it must be installed)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``low`` (a bad value is a one-line error)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an int in [``low``, ``high``] (e.g. a seed, 0 to 2**32 - 1)."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "int"
    return parse


def finite_float_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in (``low``, ``high``] (a learning rate)."""

    def parse(text: str) -> float:
        value = float(text)
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be in ({low:g}, {high:g}], got {value:g}")
        return value

    parse.__name__ = "float"
    return parse


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(what: str, n_bytes: float, option: str) -> None:
    """`UsageError` naming ``option`` when ``n_bytes`` (an estimate) exceeds the memory."""
    total = memory_bytes()
    if total is not None and n_bytes > total:
        raise UsageError(
            f"{option}: {what} needs about {n_bytes / 2**30:.3g} GiB, more than this "
            f"machine's {total / 2**30:.3g} GiB; choose smaller sizes."
        )


def unique_names(option: str, names: Sequence[str], canonical: Sequence[str]) -> None:
    """`UsageError` naming ``option`` when two of ``names`` mean the same (``canonical[i]``
    is what ``names[i]`` resolves to, e.g. ``adam`` and ``ADAM`` both ``Adam``)."""
    seen: dict[str, str] = {}
    for name, key in zip(names, canonical, strict=True):
        if key in seen:
            raise UsageError(
                f"{option} names {key} twice ({seen[key]!r} and {name!r}); name each once."
            )
        seen[key] = name


def parse_value(key: str, text: str, *, step_args: Sequence[str] = ()) -> Any:
    """``NAME=VALUE``'s value: a Python literal (number, dict, ...); ``nan`` and ``inf`` read
    as floats (so the callee's own check names them); a ``step_args`` entry must be a whole
    number (``1e3`` reads as 1000, ``100.5`` is refused)."""
    if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(text)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UsageError(
            f"cannot read {key}={text!r}: give a number (e.g. {key}="
            f"{100 if key in step_args else 0.1}) or a Python literal."
        ) from None
    if key in step_args and isinstance(value, float):
        if not value.is_integer():
            raise UsageError(f"{key} is a number of steps and must be whole, got {key}={text}.")
        value = int(value)
    return value


def parse_kwargs(pairs: Sequence[str], *, step_args: Sequence[str] = ()) -> dict[str, Any]:
    """``["a=1", "b=0.5"]`` as ``{"a": 1, "b": 0.5}`` (see `parse_value`)."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--args takes NAME=VALUE pairs, got {pair!r}.")
        kwargs[key] = parse_value(key, value, step_args=step_args)
    return kwargs
