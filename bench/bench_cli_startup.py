"""Whole-process start-up of `comptroller budget check` and `comptroller sql "select 1"`.

Each command runs as a fresh process on a demo database, alternating with `python -c pass`
in the same rounds (the machine's noise hits all of them alike); the medians of wall time
and of CPU time (user + system) are printed, and each command's excess over the baseline.

Bytecode is compiled once before measuring (into a private `PYTHONPYCACHEPREFIX`, so the
source tree stays clean): an installed wheel ships compiled, and compiling on every run
would measure the compiler, not the start-up.

    uv run python bench/bench_cli_startup.py            # builds a demo database first
    uv run python bench/bench_cli_startup.py --data-dir DIR --rounds 21
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "comptroller budget check": ["-m", "comptroller", "budget", "check"],
    'comptroller sql "select 1"': ["-m", "comptroller", "sql", "select 1"],
}


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one process (budget check exits non-zero on a finding)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if b"Traceback" in done.stderr or done.returncode > 3:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--data-dir", type=Path, help="a data directory holding a demo database")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp, "pycache"))
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp, "data")
            subprocess.run(
                [sys.executable, "-m", "comptroller", "demo", "--no-tui"],
                env={**env, "COMPTROLLER_DATA_DIR": str(data_dir)},
                check=True,
                stdout=subprocess.DEVNULL,
            )
        env["COMPTROLLER_DATA_DIR"] = str(data_dir)
        for argv in COMMANDS.values():  # warm-up: compiles bytecode, fills the page cache
            _run(argv, env)
        walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
        cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
        names = list(COMMANDS)
        for round_ in range(args.rounds):
            # Rotate the order so that no command always runs first (or right after another).
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                wall, cpu = _run(COMMANDS[name], env)
                walls[name].append(wall)
                cpus[name].append(cpu)

    base_wall = statistics.median(walls["python -c pass"])
    base_cpu = statistics.median(cpus["python -c pass"])
    print(f"{args.rounds} rounds, medians (seconds); python {sys.version.split()[0]}")
    print(f"{'command':<28} {'wall':>6} {'cpu':>6} {'wall-base':>10} {'cpu-base':>9}")
    for name in names:
        wall = statistics.median(walls[name])
        cpu = statistics.median(cpus[name])
        print(f"{name:<28} {wall:6.3f} {cpu:6.3f} {wall - base_wall:10.3f} {cpu - base_cpu:9.3f}")


if __name__ == "__main__":
    main()
