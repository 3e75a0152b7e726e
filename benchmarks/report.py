"""The benchmark's outputs: a markdown report (also printed), a JSON of every figure, a PNG."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from benchmarks import memory

CONTENDERS = ("dlopt", "fused", "fused_flat")
TARGET_TINY = ("adam", "adamw", "momentum", "rmsprop")


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


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it is met."""
    rows = {(r["tree"], r["optimizer"]): r["results"] for r in data["update"]}
    out = []

    def add(target, figure, met):
        out.append({"target": target, "measured": figure, "met": bool(met)})

    for opt in TARGET_TINY:
        for tree in [t for t, o in rows if t.startswith("tiny") and o == opt]:
            res = rows[(tree, opt)]
            add(
                f"{tree} {opt}: fused >= 3x faster than optax",
                f"fused_flat {1 / res['fused_flat']['ratio']:.2f}x, "
                f"fused (tree in/out) {1 / res['fused']['ratio']:.2f}x",
                1 / res["fused_flat"]["ratio"] >= 3,
            )
    for tree, bound, what in (("resnet50", 1.0, "fused"), ("large", 1.0, "fused")):
        worst = [(res[what]["ratio"], opt) for (t, opt), res in rows.items() if t == tree]
        worst_flat = [
            (res["fused_flat"]["ratio"], opt) for (t, opt), res in rows.items() if t == tree
        ]
        if worst:
            r, opt = max(worst)
            rf, optf = max(worst_flat)
            add(
                f"{tree}: fused time ratio <= {bound} for every optimizer",
                f"worst fused {r:.3f} ({opt}); worst fused_flat {rf:.3f} ({optf})",
                r <= bound,
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
        r, where = max((res["dlopt"]["ratio"], f"{t}/{o}") for (t, o), res in rows.items())
        add("plain dlopt time ratio <= 1.05 everywhere", f"worst {r:.3f} ({where})", r <= 1.05)
    for row in data.get("train", []):
        r = row["results"]["dlopt"]["ratio"]
        add(f"train {row['model']}: dlopt no slower than optax", f"time ratio {r:.3f}", r <= 1.0)
    for target in memory.targets(data["memory"]) if data.get("memory") else []:
        add(*target)
    return out


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
        "**Update step** (`update + apply_updates`, jit, donated). Median time of optax, and "
        "each contender's time ratio to optax (median of per-round ratios, interleaved; "
        "< 1 is faster). `fused`: `dlopt.fused(tx)` on pytrees; `fused_flat`: the same with "
        "params and gradients held flat. Compile columns: first-call time ratio to optax.",
        "",
        "| tree | leaves | params | optimizer | optax | dlopt | fused | fused_flat "
        "| compile optax | compile dlopt | compile fused |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in data["update"]:
        res = row["results"]
        ratios = " | ".join(f"{res[k]['ratio']:.3f}" for k in CONTENDERS)
        c0 = res["optax"]["compile_s"]
        lines.append(
            f"| {row['tree']} | {row['leaves']} | {row['params'] / 1e6:.2f}M | {row['optimizer']} "
            f"| {_time(res['optax']['median_s'])} | {ratios} | {c0:.2f} s "
            f"| {res['dlopt']['compile_s'] / c0:.2f} | {res['fused']['compile_s'] / c0:.2f} |"
        )
    if data.get("roofline"):
        bw = data["copy_bandwidth"]["bytes_per_s"]
        lines += [
            "",
            f"**Achieved bandwidth**, `large` tree (copy bandwidth {bw / 1e9:.1f} GB/s, a jitted "
            "`x + 1` over the same bytes): bytes each rule must move per step / median time, "
            "and the fraction of the copy bandwidth.",
            "",
            "| optimizer | MB/step | optax | dlopt | fused | fused_flat |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for e in data["roofline"]:
            cells = " | ".join(
                f"{e[k]['bytes_per_s'] / 1e9:.1f} GB/s ({e[k]['roofline']:.0%})"
                for k in ("optax", *CONTENDERS)
            )
            lines.append(
                f"| {e['optimizer']} | {e['dlopt']['bytes_per_step'] / 1e6:.0f} | {cells} |"
            )
    lines += [
        "",
        "**Optimizer state bytes per float32 parameter**",
        "",
        "| optimizer | dlopt | dlopt.fused | optax |",
        "|---|--:|--:|--:|",
    ]
    for r in data["state_bytes"]:
        lines.append(
            f"| {r['optimizer']} | {r['dlopt']:.2f} | {r['fused']:.2f} | {r['optax']:.2f} |"
        )
    if data.get("train"):
        lines += [
            "",
            "**Train step** (Adam; steps/s of the hand-written optax + Flax step, and each "
            "dlopt step's steps/s ratio to it; > 1 is faster)",
            "",
            "| model | params | optax steps/s | dlopt | dlopt (NaN guard on) | dlopt.fused |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for row in data["train"]:
            res = row["results"]
            lines.append(
                f"| {row['model']} | {row['params']:,} | {1 / res['optax']['median_s']:.1f} | "
                + " | ".join(f"{1 / res[k]['ratio']:.3f}" for k in list(res)[1:])
                + " |"
            )
    if data.get("memory"):
        lines += ["", *memory.markdown(data["memory"])]
    lines += ["", "**Targets**", "", "| target | measured | met |", "|---|---|---|"]
    for t in data["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def chart(data: dict[str, Any], path: Path) -> None:
    """Speedup over optax (optax time / contender time) per optimizer, one panel per tree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    trees = list(dict.fromkeys(r["tree"] for r in data["update"]))
    fig, axes = plt.subplots(len(trees), 1, figsize=(10, 2.6 * len(trees)), squeeze=False)
    for ax, tree in zip(axes[:, 0], trees, strict=True):
        rows = [r for r in data["update"] if r["tree"] == tree]
        x = np.arange(len(rows))
        for i, k in enumerate(CONTENDERS):
            speedup = [1 / r["results"][k]["ratio"] for r in rows]
            ax.bar(x + (i - 1) * 0.27, speedup, 0.27, label=k)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(x, [r["optimizer"] for r in rows])
        ax.set_ylabel("speedup vs optax")
        ax.set_title(f"{tree}: {rows[0]['leaves']} leaves, {rows[0]['params'] / 1e6:.2f}M params")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"dlopt vs optax update step ({data['machine']['backend']})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(data: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """Writes ``stem``.json/.md/.png under ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data["targets"] = targets(data)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(data, indent=1, default=str))
    paths["md"].write_text(markdown(data))
    if data["update"]:
        chart(data, paths["png"])
    return paths
