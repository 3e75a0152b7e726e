"""benchmarks/report.py: one convention (speed-up over optax, > 1 faster) in the console line,
the markdown and the figure; sections from new benchmark modules plug in."""

import pytest
from support.benchmarks import load


@pytest.fixture(scope="module")
def report():
    return load("report")


def result(median_s, ratio, compile_s=1.0):
    return {"median_s": median_s, "min_s": median_s, "ratio": ratio, "compile_s": compile_s}


def fake_data(report):
    update = []
    for tree, leaves in (("tiny1000", 1000), ("large", 4)):
        for opt, ratios in (("adam", (1.25, 0.5, 0.02)), ("sgd", (0.96, 1.04, 0.8))):
            update.append(
                {
                    "tree": tree,
                    "optimizer": opt,
                    "leaves": leaves,
                    "params": 1_000_000,
                    "state_bytes": {"optax": 8, "dlopt": 8},
                    "results": {
                        "optax": result(0.01, 1.0, 2.0),
                        **{
                            k: result(0.01 * r, r, 4.0)
                            for k, r in zip(report.CONTENDERS, ratios, strict=True)
                        },
                    },
                }
            )
    train = [
        {
            "model": "mlp",
            "params": 1000,
            "results": {
                "optax": result(0.002, 1.0),
                "dlopt": result(0.0025, 1.25),
                "dlopt_flat": result(0.001, 0.5),
                "dlopt_no_guard": result(0.003, 1.5),
            },
        }
    ]
    return {
        "args": {"quick": True},
        "machine": {
            "cpu": "test cpu",
            "cpu_count": 2,
            "backend": "cpu",
            "devices": ["cpu:cpu"],
            "platform": "linux",
            "versions": {"jax": "0"},
        },
        "load_start": 0.0,
        "load_end": 0.0,
        "update": update,
        "roofline": [],
        "state_bytes": [{"optimizer": "adam", "dlopt": 8.0, "fused": 8.0, "optax": 8.0}],
        "train": train,
        "sections": [
            report.section(
                "Pipelines",
                "(a new module's table)",
                ["case", "speed-up"],
                [["loader", report.fmt_speedup(2.0)]],
                labels=["loader"],
                speedups={"dlopt": [2.0]},
            )
        ],
    }


def test_speedup_is_the_inverse_time_ratio(report):
    assert report.speedup(result(1.0, 0.5)) == 2.0  # half the time: twice as fast
    assert [report.fmt_speedup(x) for x in (1.0, 0.5234, 35.27)] == ["1.00x", "0.52x", "35.3x"]
    line = report.case_line("tiny adam", {"optax": result(2e-3, 1.0), "dlopt": result(1e-3, 0.5)})
    assert line == "tiny adam  optax   2.00 ms  dlopt 2.00x"


def test_markdown_tables_are_speedups_everywhere(report):
    data = fake_data(report)
    data["targets"] = report.targets(data)
    md = report.markdown(data)
    row = next(
        ln for ln in md.splitlines() if ln.startswith("| tiny1000 | 1000 |") and "adam" in ln
    )
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:8] == ["10.00 ms", "0.80x", "2.00x", "50.0x"]  # time ratios 1.25, 0.5, 0.02
    assert cells[8:] == ["2.00 s", "0.50x", "0.50x"]  # compile: twice optax's time
    train = next(ln for ln in md.splitlines() if ln.startswith("| mlp |"))
    # dlopt 0.80x, flat 2.00x, no guard 0.67x, then the compile seconds
    assert "| 500.0 | 0.80x | 2.00x | 0.67x | 1.00 s |" in train
    assert "**Pipelines** (a new module's table)" in md and "| loader | 2.00x |" in md
    assert "> 1 is faster" in md and "ratio to optax" not in md
    worst = next(t for t in data["targets"] if t["target"].startswith("plain dlopt"))
    assert worst["measured"] == "worst 0.80x (large/adam)" and not worst["met"]


def test_figure_draws_the_speedups_around_one(report, tmp_path):
    data = fake_data(report)
    paths = report.write(data, tmp_path, "t")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and paths["md"].is_file()
    panels = report._panels(data)
    assert [p[0].split(":")[0] for p in panels] == [
        "update step, tiny1000",
        "update step, large",
        "train step (Adam)",
        "Pipelines",
    ]
    title, labels, series = panels[0]
    assert labels == ["adam", "sgd"]
    assert series["fused_flat"] == pytest.approx([50.0, 1.25])  # the dots' heights
    assert series["dlopt"] == pytest.approx([0.8, 1 / 0.96])
    ax = report.chart(data, tmp_path / "c.png").axes[0]
    dots = {
        line.get_label(): line.get_ydata() for line in ax.get_lines() if line.get_marker() == "o"
    }
    assert list(dots["fused_flat"]) == pytest.approx([50.0, 1.25])
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 1 < ax.get_ylim()[1]
    band = ax.patches[0]  # the shaded noise band around 1
    y = [band.get_y(), band.get_y() + band.get_height()]
    assert y == pytest.approx([1 / (1 + report.NOISE), 1 + report.NOISE])
