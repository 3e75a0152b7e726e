"""The dlopt command: demo (quick), schedule, lr-find, bench, --help, and one-line errors
(exit status 2) on bad arguments, found before any work starts."""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from support import ROOT

import dlopt
from dlopt.lab import cli
from dlopt.lab.cli import DEMO_OPTIMIZERS, SCHEDULE_ALIASES, main

PNG = b"\x89PNG\r\n\x1a\n"


def run(argv):
    """``main(argv)``'s exit status, whether it returns or argparse exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def is_png(path):
    return path.read_bytes()[:8] == PNG and path.stat().st_size < 200_000


def test_demo_quick_prints_table_and_diagnosis_and_writes_pngs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(["demo", "--quick", "--optimizers", "sgd", "ADAM", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if "optimizer" in line)
    for column in ("train loss", "val loss", "best epoch", "test acc", "test F1", "time s"):
        assert column in header
    rows = {
        line.split()[0]: line.split()
        for line in text.splitlines()
        if line.split()[:1] in (["SGD"], ["Adam"])
    }
    assert set(rows) == {"SGD", "Adam"}
    assert "diagnosis (dlopt.diagnose):" in text
    for name in ("loss_curves.png", "accuracy_curves.png", "test_accuracy.png"):
        assert is_png(out / name), name
    results = json.loads((out / "demo_results.json").read_text())
    assert [r["optimizer"] for r in results["rows"]] == ["SGD", "Adam"]
    for r in results["rows"]:
        assert 0.0 <= r["test acc"] <= 1.0 and r["epochs"] == 2
        assert np.isfinite(r["train loss"]) and np.isfinite(r["val loss"])
        assert f"{r['test acc']:.4g}" in rows[r["optimizer"]]
    histories = results["histories"]
    assert len(histories["SGD"]["epochs"]) == 2
    # two epochs of SGD lower the loss on 300 digits
    assert histories["SGD"]["epochs"][1]["loss"] < histories["SGD"]["epochs"][0]["loss"]


def test_demo_covers_the_issue_optimizers():
    assert list(DEMO_OPTIMIZERS) == [
        "SGD",
        "Momentum",
        "Nesterov",
        "AdaGrad",
        "RMSProp",
        "Adadelta",
        "Adam",
        "Nadam",
        "AdamW",
        "Adam 8-bit",
    ]
    for name in DEMO_OPTIMIZERS:
        cli.build_optimizer(name)  # each entry builds
    state = cli.build_optimizer("Adam 8-bit").init({"w": jnp.zeros((64, 128))})
    assert isinstance(state, dlopt.QuantizedState)


def test_schedule_prints_the_schedule_values_and_draws_it(tmp_path, capsys):
    png = tmp_path / "s.png"
    argv = [
        "schedule",
        "step",
        "--args",
        "init_value=0.1",
        "step_size=30",
        "decay_rate=0.5",
        "--steps",
        "100",
        "--plot",
        str(png),
    ]
    assert run(argv) == 0
    printed = dict(
        (int(m[1]), float(m[2]))
        for m in re.finditer(r"step\s+(\d+)\s+(\S+)", capsys.readouterr().out)
    )
    expected = dlopt.step_decay_schedule(0.1, 30, 0.5)
    assert 0 in printed and 99 in printed
    for t, value in printed.items():
        assert value == pytest.approx(float(expected(t)), rel=1e-5)
    assert is_png(png)


def test_schedule_default_length_and_out_folder(tmp_path, capsys):
    argv = [
        "schedule",
        "cosine",
        "--args",
        "init_value=1.0",
        "decay_steps=50",
        "--out",
        str(tmp_path),
    ]
    assert run(argv) == 0
    assert is_png(tmp_path / "schedule_cosine.png")
    steps = [int(m) for m in re.findall(r"step\s+(\d+)", capsys.readouterr().out)]
    assert max(steps) == 54  # 1.1 x decay_steps, so the flat end shows


def test_every_alias_names_a_schedule():
    for full in SCHEDULE_ALIASES.values():
        assert callable(getattr(dlopt, full))


def test_lr_find_suggests_a_rate_inside_the_range(tmp_path, capsys):
    argv = [
        "lr-find",
        "--steps",
        "40",
        "--limit",
        "300",
        "--min-lr",
        "1e-4",
        "--max-lr",
        "10",
        "--optimizer",
        "Momentum",  # the demo's names, any case
        "--out",
        str(tmp_path),
    ]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Momentum on ")
    suggested = float(re.search(r"suggested learning rate: (\S+)", out)[1])
    assert 1e-4 <= suggested <= 10
    assert is_png(tmp_path / "lr_find.png")


@pytest.mark.parametrize(
    "argv, match",
    [
        ([], "required"),
        (["demo", "--epochs", "0"], "--epochs"),
        (["demo", "--dataset", "imagenet"], "--dataset"),
        (["demo", "--optimizers", "Foo"], "Foo"),
        (["demo", "--bogus"], "--bogus"),
        (["schedule", "bogus"], "bogus"),
        (["schedule", "cosine", "--args", "init_value=nan", "decay_steps=10"], "init_value"),
        (["schedule", "cosine", "--args", "oops"], "oops"),
        (["schedule", "cosine", "--args", "init_value=1", "decay_steps=9", "typo=3"], "typo"),
        (["lr-find", "--min-lr", "-1"], "--min-lr"),
        (["lr-find", "--optimizer", "nosuch"], "nosuch"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, match, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_mnist_without_download_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert run(["demo", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dataset digits" in err[0]


@pytest.mark.parametrize("command", ["demo", "schedule", "lr-find"])
def test_help_lists_out(command, capsys):
    assert run([command, "--help"]) == 0
    assert "--out" in capsys.readouterr().out


def test_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "dlopt.lab.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    for command in ("demo", "schedule", "lr-find"):
        assert command in done.stdout


# --- errors before work


@pytest.fixture
def no_work(monkeypatch):
    """Makes loading data, training and benchmarking fail the test if they start."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command started working before rejecting its arguments")

    import dlopt.lab.experiments
    import dlopt.lab.tuning

    monkeypatch.setattr(cli, "_load", refuse)
    monkeypatch.setattr(dlopt.lab.experiments, "train_classifier", refuse)
    monkeypatch.setattr(dlopt.lab.tuning, "lr_find", refuse)
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.update_step

    monkeypatch.setattr(benchmarks.update_step, "run", refuse)


def bad_outputs(tmp_path):
    """(description, path) pairs no command can write its output to."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [("existing file", str(a_file)), ("under a file", str(a_file / "sub")), ("empty", "")]
    if os.path.isdir("/proc/self"):  # not writable, even for root
        cases.append(("unwritable", "/proc/dlopt_out"))
    return cases


COMMANDS = {
    "demo": ["demo", "--quick"],
    "schedule": ["schedule", "cosine", "--args", "init_value=1.0", "decay_steps=10"],
    "lr-find": ["lr-find", "--steps", "5"],
    "bench": ["bench", "--quick"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_out_is_a_one_line_error_before_any_work(command, tmp_path, no_work, capsys):
    for what, path in bad_outputs(tmp_path):
        assert run([*COMMANDS[command], "--out", path]) == 2, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--out" in err, (what, err)
        assert "Traceback" not in err and err.startswith(f"dlopt {command}: error:"), err
    assert not (tmp_path / "a_file" / "sub").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["lr-find", "--min-lr", "1", "--max-lr", "0.1"], "--max-lr must be greater than --min-lr"),
        (["lr-find", "--min-lr", "0.1", "--max-lr", "0.1"], "--max-lr must be greater"),
        (["lr-find", "--steps", "1"], "--steps"),
        (["lr-find", "--plot", "x.txt"], ".txt"),
        (["schedule", "cosine", "--args", "init_value=1.0", "decay_steps=9", "--plot", "x.txt"],
         "no image format"),
        (["schedule", "cosine", "--args", "init_value=1.0", "decay_steps=9", "--plot", "x"],
         "no extension"),
        (["schedule", "cosine", "--args", "init_value=1.0", "decay_steps=9", "--plot", "."],
         "is a folder"),
        (["schedule", "cosine", "--args", "init_value=1.0", "decay_steps=9", "--plot", ""],
         "empty"),
        (["demo", "--optimizers", "adam", "nosuch"], "nosuch"),
        (["demo", "--optimizers", "adam", "ADAM"], "--optimizers names Adam twice"),
        (["demo", "--seed", "-1"], "--seed"),
        (["demo", "--seed", "99999999999999999999999"], "--seed"),
        (["demo", "--hidden", "100000", "100000"], "--hidden"),
        (["lr-find", "--hidden", "100000", "100000"], "--hidden"),
        (["lr-find", "--seed", "-1"], "--seed"),
        (["lr-find", "--max-lr", "inf"], "--max-lr"),
        (["lr-find", "--max-lr", "1e308"], "--max-lr"),
        (["lr-find", "--max-lr", "nan"], "--max-lr"),
        (["schedule", "cosine", "--args", "init_value=0.1", "decay_steps=1e12"], "--steps N"),
        (["schedule", "cosine", "--args", "init_value=0.1", "decay_steps=1000000000000"],
         "--steps N"),
        (["schedule", "cosine", "--args", "init_value=0.1", "decay_steps=100.5"],
         "decay_steps is a number of steps and must be whole"),
        (["schedule", "cosine", "--args", "init_value=nan", "decay_steps=100"],
         "init_value must be a finite number"),
        (["schedule", "cosine", "--args", "init_value=0.1", "decay_steps=abc"], "decay_steps=100"),
        # a negative learning rate is refused, not printed with rc 0
        (["schedule", "cosine", "--args", "init_value=-0.1", "decay_steps=100"], ">= 0"),
        (["schedule", "linear", "--args", "init_value=0.1", "end_value=-0.1",
          "transition_steps=10"], "go down to -0.1"),
        (["schedule", "piecewise", "--args", "init_value=0.1", "boundaries_and_scales={10: -1.0}"],
         "go down to -0.1"),
        (["schedule", "cosine", "--args", "init_value=0.1", "decay_steps=100", "alpha=5"],
         "alpha"),
        (["bench", "--reps", "0"], "--reps"),
        (["bench", "--optimizers", "nosuch"], "nosuch"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_errors_before_any_work(argv, match, no_work, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err, err


def test_optimizer_names_in_any_case():
    for name in DEMO_OPTIMIZERS:
        for spelled in (name, name.lower(), name.upper()):
            assert cli.resolve_optimizer(spelled) == name
    with pytest.raises(cli.UsageError, match="Adam"):  # the message lists the choices
        cli.resolve_optimizer("adamm")


def test_a_missing_extra_names_the_pip_install(monkeypatch, no_work, capsys):
    monkeypatch.setitem(sys.modules, "flax", None)  # as if not installed
    assert run(["demo", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'dlopt[flax]'" in err, err


BLOCK_MATPLOTLIB = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'matplotlib':\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "from dlopt.lab.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def without_matplotlib(*argv):
    return subprocess.run(
        [sys.executable, "-c", BLOCK_MATPLOTLIB, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
    )


def test_without_matplotlib_the_demo_runs_without_figures(tmp_path):
    out = tmp_path / "demo"
    done = without_matplotlib("demo", "--quick", "--optimizers", "sgd", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "pip install 'dlopt[plots]'" in done.stderr and "Traceback" not in done.stderr
    assert "test acc" in done.stdout and (out / "demo_results.json").is_file()
    assert not list(out.glob("*.png"))
    schedule = ["schedule", "step", "--args", "init_value=0.1", "step_size=3", "decay_rate=0.5"]
    done = without_matplotlib(*schedule, "--plot", str(tmp_path / "s.png"))
    assert done.returncode == 2  # a figure asked for by name cannot be skipped
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "pip install 'dlopt[plots]'" in err, err


def test_bench_help_names_dlopt_bench(capsys):
    assert run(["bench", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: dlopt bench ")


def test_bench_knows_every_benchmarked_optimizer(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.__main__ import OPTIMIZERS
    from benchmarks.update_step import OPTIMIZERS as BENCHMARKED

    assert list(OPTIMIZERS) == list(BENCHMARKED)


def test_dataset_names_in_any_case():
    assert cli.build_parser().parse_args(["demo", "--dataset", "MNIST"]).dataset == "mnist"
    assert cli.build_parser().parse_args(["lr-find", "--dataset", "Digits"]).dataset == "digits"


@pytest.mark.parametrize(
    "argv, limit, epochs",
    [
        (["--quick"], 300, 2),
        (["--quick", "--limit", "50"], 50, 2),  # an explicit value wins over --quick
        (["--quick", "--epochs", "3"], 300, 3),
        ([], None, 40),
    ],
)
def test_quick_fills_in_what_limit_and_epochs_leave_unset(argv, limit, epochs, monkeypatch):
    seen = {}

    def load(name, *, limit, seed):
        seen["limit"] = limit
        raise cli.UsageError("stop here")

    monkeypatch.setattr(cli, "_load", load)
    monkeypatch.setattr(cli, "figures_available", lambda command: False)
    assert run(["demo", *argv, "--optimizers", "sgd"]) == 2
    assert seen["limit"] == limit
    args = cli.build_parser().parse_args(["demo", *argv])
    assert (args.epochs or (2 if args.quick else 40)) == epochs


def test_bench_quick_writes_to_a_fresh_temporary_folder(tmp_path, no_work, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for _ in range(2):
        with pytest.raises(AssertionError, match="started working"):
            run(["bench", "--quick"])
    assert len(list(tmp_path.glob("dlopt_bench_*"))) == 2  # not one fixed /tmp/dlopt_bench


def test_refusals_as_a_user_meets_them():
    """Real processes: exit status 2 and one line on stderr, before any data is loaded."""
    cases = [
        (["demo", "--seed", "-1"], "--seed"),
        (["schedule", "cosine", "--args", "init_value=0.1", "decay_steps=1e12"], "--steps N"),
        (["demo", "--hidden", "100000", "100000"], "GiB"),
    ]
    for argv, match in cases:
        done = subprocess.run(
            [sys.executable, "-m", "dlopt.lab.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2, (argv, done.stderr)
        assert len(err) == 1 and match in err[0] and not done.stdout, (argv, done.stderr)
