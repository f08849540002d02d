#!/usr/bin/env python3
"""The project's C extensions under AddressSanitizer and UBSan (issue 18).

Copies the source tree to a scratch directory, builds scanner/_walk.c,
runtime/_clock.c and runtime/_isolation.c there with `BT_SANITIZE=1` (see
setup.py), and runs, with the sanitizer runtime preloaded and that copy first
on the import path:

* every demo in every mode (one process each), then
* the stress loop of benchmarks/stress_runs.py (`--processes`, `--in-process`).

Any sanitizer report, signal death or Python traceback fails the run: the
first lines of each are printed and the exit status is 1.  Needs gcc with
libasan (Debian's gcc has it).  Example (figures in docs/benchmarks.md):

    python benchmarks/sanitized_runs.py --processes 60 --in-process 60
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMOS = ("cpuloop", "exceptions", "fnptr", "hello", "hotflags", "probe-flags", "probe-protection",
         "probe-segments", "probe-tables", "smc", "syscall", "timer")
MODES = ("emulate", "trap", "bt")
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "*.so", "__pycache__", "*.egg-info", ".ipynb_checkpoints")


def asan_runtime() -> str:
    """Path of gcc's libasan, which must be loaded before Python's first malloc."""
    try:
        path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("error: gcc is needed to build the sanitized extensions (apt-get install gcc)")
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SystemExit("error: gcc has no libasan.so (Debian: apt-get install libasan8)")
    return os.path.realpath(path)


def build(tree: Path) -> None:
    shutil.copytree(REPO, tree, ignore=SKIP)
    p = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                       capture_output=True, text=True, env={**os.environ, "BT_SANITIZE": "1"})
    if p.returncode:
        raise SystemExit(f"error: sanitized build failed: {p.stderr.strip().splitlines()[-1:]}")
    # capstone's binding dlopens its library with RTLD_DEEPBIND, which the ASan
    # runtime refuses (google/sanitizers#611); in the copy only, a sitecustomize
    # hides the flag so capstone loads it the ordinary way.
    (tree / "sitecustomize.py").write_text(
        "import os\nos.__dict__.pop('RTLD_DEEPBIND', None)  # see benchmarks/sanitized_runs.py\n")


def sanitized_env(tree: Path) -> dict:
    return {**os.environ,
            "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "LD_PRELOAD": asan_runtime(),
            # Python itself is not instrumented: its arenas look like leaks.
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:print_summary=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
            "PYTHONFAULTHANDLER": "1"}


def problem(p: subprocess.CompletedProcess, what: str) -> str | None:
    err = p.stderr
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "Fatal Python error", "Traceback"):
        if marker in err:
            at = err.index(marker)
            return f"{what}: " + " | ".join(err[at:].splitlines()[:6])
    if p.returncode < 0:
        return f"{what}: killed by signal {-p.returncode}"
    return None


def loaded_sanitized(tree: Path, env: dict) -> bool:
    """The copy's extensions are the ones imported (not the installed tree's).
    Every process runs in the copy's parent directory: `python -c` puts the
    working directory first on the path, ahead of PYTHONPATH."""
    p = subprocess.run([sys.executable, "-c", "import runtime._clock as c; print(c.__file__)"],
                       capture_output=True, text=True, env=env, cwd=tree.parent)
    return p.returncode == 0 and p.stdout.strip().startswith(str(tree))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--processes", type=int, default=60, metavar="N")
    ap.add_argument("--in-process", type=int, default=60, metavar="N")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bt-sanitized-") as tmp:
        tree = Path(tmp) / "bt"
        build(tree)
        env = sanitized_env(tree)
        if not loaded_sanitized(tree, env):
            print("error: the sanitized extensions are not the ones Python imports", file=sys.stderr)
            return 1
        for demo in DEMOS:
            for mode in MODES:
                p = subprocess.run([sys.executable, "-c", "import sys; from bt.cli.run import main; sys.exit(main())",
                                    f"demo:{demo}", "--mode", mode, "-q"],
                                   capture_output=True, text=True, env=env, timeout=600, cwd=tree.parent)
                msg = problem(p, f"demo:{demo} --mode {mode}")
                if msg:
                    problems.append(msg)
                    print(msg, flush=True)
        p = subprocess.run([sys.executable, str(tree / "benchmarks" / "stress_runs.py"),
                            "--processes", str(a.processes), "--in-process", str(a.in_process),
                            "--jobs", str(a.jobs)], capture_output=True, text=True, env=env, cwd=tree.parent)
        print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "(stress loop printed nothing)")
        msg = problem(p, "stress loop") or (f"stress loop: exit {p.returncode}: {p.stdout.strip()[-300:]}"
                                            if p.returncode else None)
        if msg:
            problems.append(msg)
            print(msg, flush=True)
    print(f"sanitized: {len(DEMOS) * len(MODES)} demo runs + stress loop; problems: {len(problems)}; "
          f"time: {time.monotonic() - t0:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
