"""Throughput of `comptroller check-imports` on a big tree: files per second.

Scans a folder (by default this project's own .venv site-packages: thousands of files from
many authors) in alternating rounds with two references measured the same way, so the
machine's noise hits all of them alike:

- `read`: walk the same files and read their bytes (the floor: what any scan must pay);
- `check`: `comptroller._check_imports.check()`, what the command runs;
- `parse all`: read and `ast.parse` every file: the least a scan without the text
  pre-filter would pay.

Prints the median wall and CPU time and files/s of each (on a shared machine CPU time is
the steadier figure), and the findings of the last `check`.

    uv run python bench/bench_check_imports.py
    uv run python bench/bench_check_imports.py --rounds 5 PATH
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from comptroller._check_imports import check, iter_python_files


def _read(files: list[Path]) -> None:
    for file in files:
        file.read_bytes()


def _parse_all(files: list[Path]) -> None:
    for file in files:
        with contextlib.suppress(SyntaxError, ValueError):
            ast.parse(file.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", nargs="?", type=Path, help="folder to scan [default: site-packages]"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-parse-all", action="store_true", help="skip the slow reference")
    args = parser.parse_args()
    root: Path = args.path or Path(sysconfig.get_paths()["purelib"])
    files = list(iter_python_files([root]))
    print(f"{root}: {len(files)} Python files, {sum(f.stat().st_size for f in files) / 1e6:.0f} MB")

    runs: dict[str, Callable[[], object]] = {
        "read": lambda: _read(files),
        "check": lambda: check([root]),
    }
    if not args.no_parse_all:
        runs["parse all"] = lambda: _parse_all(files)
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    _read(files)  # warm the page cache: every variant reads from memory
    for _ in range(args.rounds):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    for name, samples in times.items():
        wall, busy = statistics.median(samples), statistics.median(cpu[name])
        print(
            f"{name:>10}: wall {wall:6.2f} s {len(files) / wall:7.0f} files/s   "
            f"cpu {busy:6.2f} s {len(files) / busy:7.0f} files/s"
        )
    report = check([root])
    print(f"check: {report.summary()}", file=sys.stderr)


if __name__ == "__main__":
    main()
