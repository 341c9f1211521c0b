"""Budget state under runaway queries: does `/api/budget-state` keep answering?

    uv run python bench/bench_query_isolation.py [--queries 8] [--rows 3000000000]
        [--window 20] [--timeout-s 5]

Starts a real collector (`comptroller collect`, a subprocess on a free port, a fresh
database), sends `--queries` concurrent `select sum(hash(i)) from range(N)` to
`/api/query`, and meanwhile asks `/api/budget-state` every 100 ms for `--window` seconds
(each ask waits at most 90 s). Prints JSON: budget-state latency (p50, p99, max, count of
answers over 2 s) and how each runaway query ended (status and first words of the answer).
`--timeout-s` sets the collector's query time limit (`COMPTROLLER_COLLECTOR_QUERY_TIMEOUT_S`;
leave it out for a collector without that setting). The collector process is killed at the
end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_collector(db: Path, port: int, timeout_s: float | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if timeout_s is not None:
        env["COMPTROLLER_COLLECTOR_QUERY_TIMEOUT_S"] = str(timeout_s)
    env.pop("COMPTROLLER_CONFIG", None)
    command = [sys.executable, "-m", "comptroller", "--data-dir", str(db.parent), "collect"]
    command += ["--db", str(db), "--port", str(port), "--no-grpc"]
    process = subprocess.Popen(command, env=env, cwd=db.parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the collector did not start")


def runaway(url: str, rows: int, out: list[dict[str, Any]]) -> None:
    sql = f"select sum(hash(i)) from range({rows}) t(i)"
    started = time.monotonic()
    try:
        response = httpx.post(f"{url}/api/query", json={"sql": sql}, timeout=300)
        status: object = response.status_code
        text = response.text[:120] if response.status_code != 200 else "result"
    except httpx.HTTPError as exc:
        status, text = type(exc).__name__, str(exc)[:120]
    out.append({"status": status, "s": round(time.monotonic() - started, 2), "answer": text})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--rows", type=int, default=3_000_000_000)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--timeout-s", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        db = Path(tmp) / "usage.duckdb"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_collector(db, port, args.timeout_s)
        try:
            httpx.get(f"{url}/api/budget-state", timeout=30).raise_for_status()  # warm
            ended: list[dict[str, Any]] = []
            threads = [
                threading.Thread(target=runaway, args=(url, args.rows, ended), daemon=True)
                for _ in range(args.queries)
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.3)  # the queries are running
            latencies: list[float] = []
            failures: list[str] = []
            stop_at = time.monotonic() + args.window
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    httpx.get(f"{url}/api/budget-state", timeout=90).raise_for_status()
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}"[:120])
                latencies.append(time.monotonic() - started)
                time.sleep(0.1)
            for thread in threads:
                thread.join(max(1.0, (args.timeout_s or 60) * args.queries))
        finally:
            process.kill()
            process.wait(30)
    ordered = sorted(latencies)
    print(
        json.dumps(
            {
                "queries": args.queries,
                "rows": args.rows,
                "budget_state": {
                    "asks": len(ordered),
                    "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
                    "p99_ms": round(
                        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1
                    ),
                    "max_ms": round(ordered[-1] * 1000, 1),
                    "over_2s": sum(1 for s in ordered if s > 2),
                    "failures": failures[:3],
                },
                "runaway_queries": ended,
                "still_running": args.queries - len(ended),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
