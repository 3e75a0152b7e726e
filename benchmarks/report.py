"""The benchmark's outputs: a markdown report (also printed), a JSON of every figure, a PNG.

One convention everywhere (console, markdown, figure): a **speed-up** over the baseline,
``baseline time / contender time``, so > 1 is faster and 0.5 is twice as slow. The timing
code (`benchmarks.timing.interleaved`) stores the raw per-round time ratio (``"ratio"``,
contender / baseline, < 1 faster) in the JSON; `speedup` turns it around. Ratios within
`NOISE` of 1 (5%) are run-to-run noise on a shared CPU: the figure shades that band.

Adding a benchmark: a module returns rows with `benchmarks.timing.interleaved` results;
``__main__`` appends ``section(...)`` to ``data["sections"]``; `markdown` prints each section
as a table after the built-in ones and `chart` draws a panel for each section given
``speedups`` (``{contender: [speed-up per label]}``).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

CONTENDERS = ("dlopt", "fused", "fused_flat")
TARGET_TINY = ("adam", "adamw", "momentum", "rmsprop")
NOISE = 0.05  # speed-ups within 1 +- 5% are run-to-run noise here


def speedup(result: Mapping[str, Any]) -> float:
    """``baseline time / contender time`` (> 1 faster) from an `interleaved` result entry."""
    return 1.0 / result["ratio"]


def fmt_speedup(x: float) -> str:
    """A speed-up as a table cell: ``1.07x``, ``0.52x``, ``35.3x``."""
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def case_line(label: str, results: Mapping[str, Mapping[str, Any]], *, rate: bool = False) -> str:
    """One console line per benchmarked case: the baseline's time (or steps/s with ``rate``)
    and each contender's speed-up over it."""
    names = list(results)
    base = results[names[0]]["median_s"]
    shown = f"{1 / base:8.1f} steps/s" if rate else f"{_time(base):>9s}"
    return f"{label}  {names[0]} {shown}" + "".join(
        f"  {k} {fmt_speedup(speedup(results[k]))}" for k in names[1:]
    )


def progress_log(total: int, print_fn: Callable[..., Any] = print) -> Callable[[str], None]:
    """A ``log(line)`` for the benchmark modules: each line prefixed ``[k/total]`` and flushed
    at once, so a terminal and a log file both show how far the run is."""
    done = [0]

    def log(line: str) -> None:
        done[0] += 1
        width = len(str(total))
        print_fn(f"[{done[0]:>{width}}/{total}] {line.strip()}", flush=True)

    return log


def machine() -> dict[str, Any]:
    """The machine, its devices and the library versions."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    devices = jax.devices()
    versions = {}
    for pkg in ("jax", "jaxlib", "optax", "flax", "dlopt", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "versions": versions,
    }


def section(
    title: str,
    intro: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    labels: Sequence[str] | None = None,
    speedups: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """A table for the report (and, with ``labels`` and ``speedups``, a figure panel).

    Cells are written as given (floats to 3 decimals); use `fmt_speedup` for speed-ups.
    ``speedups[contender][i]`` is the speed-up over the baseline for ``labels[i]``.
    """
    out: dict[str, Any] = {
        "title": title,
        "intro": intro,
        "columns": list(columns),
        "rows": [list(r) for r in rows],
    }
    if speedups is not None:
        out["labels"] = list(labels or [])
        out["speedups"] = {k: [float(x) for x in v] for k, v in speedups.items()}
    return out


def _rows_by_case(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["tree"], r["optimizer"]): r["results"] for r in data["update"]}


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured speed-up and whether it is met."""
    rows = _rows_by_case(data)
    out = []

    def add(target, figure, met):
        out.append({"target": target, "measured": figure, "met": bool(met)})

    for opt in TARGET_TINY:
        for tree in [t for t, o in rows if t.startswith("tiny") and o == opt]:
            res = rows[(tree, opt)]
            add(
                f"{tree} {opt}: fused >= 3x faster than optax",
                f"fused_flat {fmt_speedup(speedup(res['fused_flat']))}, "
                f"fused (tree in/out) {fmt_speedup(speedup(res['fused']))}",
                speedup(res["fused_flat"]) >= 3,
            )
    for tree in ("resnet50", "large"):
        worst = [(speedup(res["fused"]), opt) for (t, opt), res in rows.items() if t == tree]
        worst_flat = [
            (speedup(res["fused_flat"]), opt) for (t, opt), res in rows.items() if t == tree
        ]
        if worst:
            s, opt = min(worst)
            sf, optf = min(worst_flat)
            add(
                f"{tree}: fused no slower than optax (speed-up >= 1) for every optimizer",
                f"worst fused {fmt_speedup(s)} ({opt}); worst fused_flat {fmt_speedup(sf)} "
                f"({optf})",
                s >= 1.0,
            )
    for entry in data.get("roofline", []):
        if entry["optimizer"] == "adam":
            best = max(CONTENDERS, key=lambda k: entry[k]["roofline"])
            add(
                "large adam: >= 80% of copy-bandwidth roofline",
                ", ".join(f"{k} {entry[k]['roofline']:.0%}" for k in ("optax", *CONTENDERS)),
                entry[best]["roofline"] >= 0.8,
            )
    if rows:
        s, where = min((speedup(res["dlopt"]), f"{t}/{o}") for (t, o), res in rows.items())
        add(
            "plain dlopt at most 5% slower than optax (speed-up >= 0.952) everywhere",
            f"worst {fmt_speedup(s)} ({where})",
            s >= 1 / 1.05,
        )
    goals = {"residual_194": 1.4}  # issue 14: the deep narrow net; 1.0 everywhere else
    for row in data.get("train", []):
        res = row["results"]
        goal, s = goals.get(row["model"], 1.0), speedup(res["dlopt"])
        add(
            f"train {row['model']}: dlopt (defaults: the default layout) >= {goal}x the optax step",
            f"speed-up {s:.3f}x",
            s >= goal,
        )
    if data.get("shelf"):
        from benchmarks import shelf

        for target in shelf.targets(data["shelf"]):
            add(*target)
    if data.get("memory"):
        from benchmarks import memory  # memory imports update_step, which imports this module

        for target in memory.targets(data["memory"]):
            add(*target)
    return out


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "---" + "|--:" * (len(columns) - 1)
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return [
        "| " + " | ".join(columns) + " |",
        "|" + align + "|",
        *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows),
    ]


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"### dlopt vs optax ({'quick' if data['args']['quick'] else 'full'} run)",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores), backend `{m['backend']}`, devices "
        f"{', '.join(sorted(set(m['devices'])))}; {m['platform']}; load average at start "
        f"{data['load_start']:.2f}, end {data['load_end']:.2f}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + ".",
        "",
    ]
    if data["machine"]["backend"] == "cpu":
        lines += ["CPU only; GPU run pending.", ""]
    lines += [
        "Every figure is a **speed-up over optax**: optax's time / the contender's time, the "
        "median over interleaved rounds, so > 1 is faster and 0.50x twice as slow; within "
        f"1 +- {NOISE:.0%} is run-to-run noise here.",
        "",
        "**Update step** (`update + apply_updates`, jit, donated). The optax column is its "
        "median time. `fused`: `dlopt.fused(tx)` on pytrees; `fused_flat`: the same with "
        "params and gradients held flat. Compile columns: optax's first-call (trace + "
        "compile) time, and each contender's speed-up over it.",
        "",
    ]
    update_rows = []
    for row in data["update"]:
        res = row["results"]
        c0 = res["optax"]["compile_s"]
        update_rows.append(
            [
                row["tree"],
                row["leaves"],
                f"{row['params'] / 1e6:.2f}M",
                row["optimizer"],
                _time(res["optax"]["median_s"]),
                *(fmt_speedup(speedup(res[k])) for k in CONTENDERS),
                f"{c0:.2f} s",
                *(fmt_speedup(c0 / res[k]["compile_s"]) for k in ("dlopt", "fused")),
            ]
        )
    lines += _table(
        ["tree", "leaves", "params", "optimizer", "optax", *CONTENDERS, "compile optax"]
        + ["compile dlopt", "compile fused"],
        update_rows,
        "---|--:|--:|---" + "|--:" * 7,
    )
    if data.get("roofline"):
        bw = data["copy_bandwidth"]["bytes_per_s"]
        lines += [
            "",
            f"**Achieved bandwidth**, `large` tree (copy bandwidth {bw / 1e9:.1f} GB/s, a jitted "
            "`x + 1` over the same bytes): bytes each rule must move per step / median time, "
            "and the fraction of the copy bandwidth (higher is better).",
            "",
        ]
        lines += _table(
            ["optimizer", "MB/step", "optax", *CONTENDERS],
            [
                [
                    e["optimizer"],
                    f"{e['dlopt']['bytes_per_step'] / 1e6:.0f}",
                    *(
                        f"{e[k]['bytes_per_s'] / 1e9:.1f} GB/s ({e[k]['roofline']:.0%})"
                        for k in ("optax", *CONTENDERS)
                    ),
                ]
                for e in data["roofline"]
            ],
        )
    lines += ["", "**Optimizer state bytes per float32 parameter**", ""]
    lines += _table(
        ["optimizer", "dlopt", "dlopt.fused", "optax"],
        [
            [r["optimizer"], f"{r['dlopt']:.2f}", f"{r['fused']:.2f}", f"{r['optax']:.2f}"]
            for r in data["state_bytes"]
        ],
    )
    if data.get("train"):
        contenders = [k for k in data["train"][0]["results"] if k != "optax"]
        lines += [
            "",
            "**Train step** (Adam): steps/s of the hand-written optax + Flax step, and each "
            "dlopt step's speed-up over it (`make_train_step` with its defaults, NaN guard "
            "on, unless the column says otherwise); compile: first-call seconds.",
            "",
        ]
        lines += _table(
            [
                "model",
                "leaves",
                "params",
                "optax steps/s",
                *(TRAIN_NAMES.get(k, k) for k in contenders),
                "compile optax",
                *(f"compile {TRAIN_NAMES.get(k, k)}" for k in contenders),
            ],
            [
                [
                    row["model"],
                    str(row.get("leaves", "")),
                    f"{row['params']:,}",
                    f"{1 / row['results']['optax']['median_s']:.1f}",
                    *(fmt_speedup(speedup(row["results"][k])) for k in contenders),
                    *(f"{row['results'][k]['compile_s']:.2f} s" for k in ("optax", *contenders)),
                ]
                for row in data["train"]
            ],
        )
    for extra in data.get("sections", []):
        lines += ["", f"**{extra['title']}** {extra['intro']}".rstrip(), ""]
        lines += _table(extra["columns"], extra["rows"])
    if data.get("memory"):
        from benchmarks import memory

        lines += ["", *memory.markdown(data["memory"])]
    lines += ["", "**Targets**", ""]
    lines += _table(
        ["target", "measured", "met"],
        [[t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in data["targets"]],
        "---|---|---",
    )
    return "\n".join(lines) + "\n"


TRAIN_NAMES = {
    "dlopt": "dlopt (default layout)",
    "dlopt_tree": "dlopt flat=False",
    "dlopt_flat": "dlopt flat=True",
    "dlopt_no_guard": "dlopt, NaN guard off",
}


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def _panels(data: dict[str, Any]) -> list[tuple[str, list[str], dict[str, list[float]]]]:
    """(title, labels, {contender: speed-ups}) for every panel of the figure."""
    panels = []
    for tree in dict.fromkeys(r["tree"] for r in data["update"]):
        rows = [r for r in data["update"] if r["tree"] == tree]
        title = f"update step, {tree}: {rows[0]['leaves']} leaves, {rows[0]['params'] / 1e6:.2f}M"
        series = {k: [speedup(r["results"][k]) for r in rows] for k in CONTENDERS}
        panels.append((title + " params", [r["optimizer"] for r in rows], series))
    if data.get("train"):
        contenders = [k for k in data["train"][0]["results"] if k != "optax"]
        series = {
            TRAIN_NAMES.get(k, k): [speedup(r["results"][k]) for r in data["train"]]
            for k in contenders
        }
        panels.append(("train step (Adam)", [r["model"] for r in data["train"]], series))
    for extra in data.get("sections", []):
        if extra.get("speedups"):
            panels.append((extra["title"], extra["labels"], extra["speedups"]))
    return panels


def _ticks(low: float, high: float) -> list[float]:
    """Speed-up ticks that fit between ``low`` and ``high`` without crowding around 1."""
    coarse = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2, 5, 10, 20, 50, 100, 200, 500)
    fine = (0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2)
    span = math.log10(high / low)
    picked = coarse if span > 1.0 else fine if span < 0.4 else (0.2, 0.5, 0.8, 1.0, 1.25, 2, 5)
    return [t for t in picked if low <= t <= high]


def speedup_panel(
    ax: Any,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str = "",
    *,
    legend: bool = True,
) -> None:
    """Dots of each contender's speed-up per label around a line at 1 on a log axis (2x
    faster and 2x slower equally far from it), the noise band `NOISE` shaded; the legend
    right of the axes."""
    import numpy as np

    x = np.arange(len(labels))
    values = [v for vs in series.values() for v in vs if v > 0 and math.isfinite(v)]
    low = min([*values, 1 / (1 + 2 * NOISE)]) / 1.15
    high = max([*values, 1 + 2 * NOISE]) * 1.15
    ax.axhspan(1 / (1 + NOISE), 1 + NOISE, color="0.9", zorder=0, lw=0)
    ax.axhline(1.0, color="0.3", lw=0.8, zorder=1)
    width = 0.6 / max(len(series), 1)
    for i, (name, vs) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        ax.plot(x + offset, vs, "o", ms=4.5, label=name, color=f"C{i}", zorder=3)
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ticks = _ticks(low, high)
    ax.set_yticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    if len(labels) > 12:  # many cases: slanted names
        ax.set_xticks(x, labels, fontsize=7, rotation=40, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.grid(axis="x", alpha=0.2)
    ax.set_ylabel("speed-up", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)


def chart(data: dict[str, Any], path: Path) -> Any:
    """Speed-up over optax per case, one panel per tree (and the train step, and sections);
    saves the PNG and returns the figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panels = _panels(data)
    fig = Figure(figsize=(11, 2.3 * len(panels) + 0.9))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (title, labels, series) in zip(axes, panels, strict=True):
        speedup_panel(ax, labels, series, title)
    band = Patch(color="0.9", label=f"1 +- {NOISE:.0%}: run-to-run noise on this machine")
    fig.legend(handles=[band], loc="lower center", fontsize=8, frameon=False)
    fig.suptitle(
        f"dlopt vs optax ({data['machine']['backend']}): speed-up = optax time / dlopt time, "
        "> 1 is faster",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=80)
    return fig


def write(data: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """Writes ``stem``.json/.md/.png under ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data["targets"] = targets(data)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(data, indent=1, default=str))
    paths["md"].write_text(markdown(data))
    if data["update"] or data.get("train"):
        chart(data, paths["png"])
    else:
        del paths["png"]
    return paths
