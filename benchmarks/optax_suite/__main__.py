"""``python -m benchmarks.optax_suite [--files PATTERN ...] [--out DIR]``: the drop-in report.

Runs each selected test file of the installed optax with pytest, as shipped and with dlopt
swapped in (`benchmarks.optax_suite.plugin`), in fresh processes, and writes
``optax_suite.{json,md}`` to ``--out`` (default benchmarks/results): per file the pass counts,
the names swapped, and every test that passes on optax but not with dlopt, with the first
line of its error. optax's ``sharding_test.py`` is run from a copy without its jax version
check (a string comparison that skips it on jax >= 0.10).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

DEFAULT_FILES = (
    "optax_test.py",
    "_src/*_test.py",
    "assignment/*_test.py",
    "contrib/*_test.py",
    "losses/*_test.py",
    "microbatching/*_test.py",
    "perturbations/*_test.py",
    "projections/*_test.py",
    "schedules/*_test.py",
    "transforms/*_test.py",
    "tree_utils/*_test.py",
)  # every public module of issue 21; optax.tree and optax.second_order ship no test file
# (tree_utils' tests exercise optax.tree's functions); not experimental/ (optax.experimental
# is left out, see dlopt.compat.DELIBERATE)


def optax_root() -> Path:
    import optax

    return Path(optax.__file__).parent


def test_files(patterns: list[str]) -> list[Path]:
    root = optax_root()
    files: list[Path] = []
    for pattern in patterns:
        files += sorted(root.glob(pattern))
    return files


def _runnable(path: Path, workdir: Path) -> Path:
    """``path``, or for sharding_test.py a copy without the version-string skip."""
    if path.name != "sharding_test.py":
        return path
    text = re.sub(r"if jax\.__version__ < '[0-9.]+':", "if False:", path.read_text())
    copy = workdir / "optax_sharding_test.py"
    copy.write_text(text)
    return copy


def run_file(path: Path, swapped: bool, workdir: Path, timeout: int) -> dict:
    """Runs one test file in a fresh pytest process; returns {test id: (outcome, message)}."""
    tag = "dlopt" if swapped else "optax"
    xml = workdir / f"{path.stem}.{tag}.xml"
    swap_log = workdir / f"{path.stem}.{tag}.swaps.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(_runnable(path, workdir)),
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        f"--junitxml={xml}",
        "--rootdir",
        str(workdir),
    ]
    if swapped:
        cmd += ["-p", "benchmarks.optax_suite.plugin"]
    env = {**os.environ, "DLOPT_SWAP_LOG": str(swap_log), "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"outcomes": {}, "swapped": {}, "seconds": timeout, "timed_out": True}
    outcomes = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            test_id = f"{case.get('classname', '')}::{case.get('name')}"
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                    message = (child.get("message") or child.text or "").strip().splitlines()
                    message = message[0][:300] if message else ""
                elif child.tag == "skipped":
                    outcome = "skipped"
            outcomes[test_id] = (outcome, message)
    swapped_names = json.loads(swap_log.read_text()) if swap_log.exists() else {}
    return {
        "outcomes": outcomes,
        "swapped": swapped_names,
        "seconds": round(time.perf_counter() - start, 1),
        "timed_out": False,
    }


def compare(path: Path, workdir: Path, timeout: int) -> dict:
    theirs = run_file(path, False, workdir, timeout)
    ours = run_file(path, True, workdir, timeout)
    passed = lambda run: {t for t, (o, _) in run["outcomes"].items() if o == "passed"}  # noqa: E731
    lost = sorted(passed(theirs) - passed(ours))
    return {
        "file": str(path.relative_to(optax_root())),
        "optax_passed": len(passed(theirs)),
        "dlopt_passed": len(passed(ours)),
        "tests": len(theirs["outcomes"]),
        "swapped": ours["swapped"],
        "lost": {t: ours["outcomes"].get(t, ("missing", ""))[1] for t in lost},
        "gained": sorted(passed(ours) - passed(theirs)),
        "seconds": theirs["seconds"] + ours["seconds"],
        "timed_out": theirs["timed_out"] or ours["timed_out"],
    }


def markdown(results: list[dict]) -> str:
    total_optax = sum(r["optax_passed"] for r in results)
    total_dlopt = sum(r["dlopt_passed"] for r in results)
    lines = [
        "# optax's own tests with dlopt swapped in",
        "",
        f"{total_optax} tests pass on optax, {total_dlopt} with dlopt's functions swapped in "
        f"({total_optax - total_dlopt} lost).",
        "",
        "| file | tests | optax passed | dlopt passed | names swapped |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in results:
        swaps = sum(len(v) for v in r["swapped"].values())
        flag = " (timed out)" if r["timed_out"] else ""
        lines.append(
            f"| {r['file']}{flag} | {r['tests']} | {r['optax_passed']} | "
            f"{r['dlopt_passed']} | {swaps} |"
        )
    lines += ["", "## Tests that pass on optax but not with dlopt", ""]
    for r in results:
        for test, message in r["lost"].items():
            lines.append(f"- `{r['file']}` `{test}`: {message}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.optax_suite", description=__doc__)
    p.add_argument(
        "--files",
        nargs="+",
        default=list(DEFAULT_FILES),
        help="glob patterns under the optax package (default: the drop-in set)",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per file and run")
    args = p.parse_args(argv)
    files = test_files(args.files)
    if not files:
        p.error(f"--files matched no optax test file: {args.files}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            result = compare(path, Path(tmp), args.timeout)
            results.append(result)
            print(
                f"{result['file']}: optax {result['optax_passed']}, dlopt "
                f"{result['dlopt_passed']} of {result['tests']} ({result['seconds']:.0f} s)",
                flush=True,
            )
    (args.out / "optax_suite.json").write_text(json.dumps(results, indent=1))
    (args.out / "optax_suite.md").write_text(markdown(results))
    print(f"wrote {args.out / 'optax_suite.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
