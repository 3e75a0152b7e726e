"""``python -m benchmarks.optax_suite [--files PATTERN ...] [--jobs N] [--parts DIR] [--out DIR]``.

The drop-in report. Runs each selected test file of the installed optax with pytest, as
shipped and with dlopt swapped in (`benchmarks.optax_suite.plugin`), in fresh processes
(``--jobs`` files at a time, each run under ``--timeout`` seconds), and writes
``optax_suite.{json,md}`` to ``--out`` (default benchmarks/results): per file the pass counts,
the names swapped, and every test that passes on optax but not with dlopt, with the first
line of its error. optax's ``sharding_test.py`` is run from a copy without its jax version
check (a string comparison that skips it on jax >= 0.10).

Each file's result is also written to ``--parts`` as soon as it is done (one JSON per file,
with the command and commit that produced it); ``--resume`` skips the files already there,
and ``--merge DIR ...`` writes the combined report from such directories alone (a later
directory's result for a file replaces an earlier one's), so a long run can be done in pieces
and a file rerun after a fix.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
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
    timed_out = False
    proc = subprocess.Popen(
        cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # interrupted: pytest still writes the tests it ran
        timed_out = True
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
        "timed_out": timed_out,
    }


def compare(path: Path, workdir: Path, timeout: int) -> dict:
    workdir = workdir / str(path.relative_to(optax_root())).replace("/", "__")
    workdir.mkdir(parents=True, exist_ok=True)
    theirs = run_file(path, False, workdir, timeout)
    ours = run_file(path, True, workdir, timeout)
    passed = lambda run: {t for t, (o, _) in run["outcomes"].items() if o == "passed"}  # noqa: E731
    lost = sorted(passed(theirs) - passed(ours))
    return {
        "file": _rel(path),
        "optax_passed": len(passed(theirs)),
        "dlopt_passed": len(passed(ours)),
        "tests": len(theirs["outcomes"]),
        "swapped": ours["swapped"],
        "lost": {t: ours["outcomes"].get(t, ("missing", ""))[1] for t in lost},
        "gained": sorted(passed(ours) - passed(theirs)),
        "seconds": theirs["seconds"] + ours["seconds"],
        "timed_out": theirs["timed_out"] or ours["timed_out"],
    }


def _provenance() -> dict:
    """The command line and the commit (``+dirty`` with uncommitted changes) of this run."""
    git = ["git", "-C", str(Path(__file__).parents[2])]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "dlopt", "benchmarks/optax_suite"],
        capture_output=True,
        text=True,
    )
    return {
        "command": "python -m benchmarks.optax_suite " + " ".join(sys.argv[1:]),
        "commit": head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
    }


def _part_path(parts: Path, file: str) -> Path:
    return parts / (file.replace("/", "__") + ".json")


def merge(dirs: list[Path]) -> list[dict]:
    """The per-file results in ``dirs`` (a later directory's replaces an earlier one's), in
    `DEFAULT_FILES` order, then any other file by name."""
    by_file: dict[str, dict] = {}
    for d in dirs:
        for part in sorted(d.glob("*.json")):
            result = json.loads(part.read_text())
            by_file[result["file"]] = result
    order = {_rel(p): i for i, p in enumerate(test_files(list(DEFAULT_FILES)))}
    return sorted(by_file.values(), key=lambda r: (order.get(r["file"], len(order)), r["file"]))


def markdown(results: list[dict]) -> str:
    total_optax = sum(r["optax_passed"] for r in results)
    total_dlopt = sum(r["dlopt_passed"] for r in results)
    runs = sorted({(r.get("command", "?"), r.get("commit", "?")) for r in results})
    lines = [
        "# optax's own tests with dlopt swapped in",
        "",
        f"{len(results)} test files: {total_optax} tests pass on optax, {total_dlopt} with "
        f"dlopt's functions swapped in ({total_optax - total_dlopt} fewer; "
        f"{sum(len(r['gained']) for r in results)} pass only with dlopt).",
        "",
        "Produced by (command, commit; each file's own in the JSON):",
        "",
        *[f"- `{command}` at `{commit}`" for command, commit in runs],
        "",
        "| file | tests | optax passed | dlopt passed | names swapped |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in results:
        swaps = sum(len(v) for v in r["swapped"].values())
        flag = " (timed out: the tests run before it)" if r["timed_out"] else ""
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
    p.add_argument("--jobs", type=int, default=1, help="files run at the same time (default 1)")
    p.add_argument("--parts", type=Path, help="directory for the per-file results (default: temp)")
    p.add_argument("--resume", action="store_true", help="skip files already in --parts")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="only write the report from these --parts directories",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        results = merge(args.merge)
        if not results:
            p.error(f"--merge found no per-file result in {args.merge}")
        return _write(results, args.out)
    files = test_files(args.files)
    if not files:
        p.error(f"--files matched no optax test file: {args.files}")
    provenance = _provenance()
    with tempfile.TemporaryDirectory() as tmp:
        parts = args.parts or Path(tmp) / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        if args.resume:
            files = [f for f in files if not _part_path(parts, _rel(f)).exists()]

        def one(path: Path) -> dict:
            result = {**compare(path, Path(tmp), args.timeout), **provenance}
            _part_path(parts, result["file"]).write_text(json.dumps(result, indent=1))
            print(
                f"{result['file']}: optax {result['optax_passed']}, dlopt "
                f"{result['dlopt_passed']} of {result['tests']} ({result['seconds']:.0f} s)",
                flush=True,
            )
            return result

        files.sort(key=lambda f: -f.stat().st_size)  # the longest first: jobs end together
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, files))
        results = merge([parts])
    return _write(results, args.out)


def _rel(path: Path) -> str:
    return str(path.relative_to(optax_root()))


def _write(results: list[dict], out: Path) -> int:
    (out / "optax_suite.json").write_text(json.dumps(results, indent=1))
    (out / "optax_suite.md").write_text(markdown(results))
    print(f"wrote {out / 'optax_suite.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
