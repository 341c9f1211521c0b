"""Analytics speed on the generated 10M-row database (see bench/gen_usage_db.py).

Targets (issue 6): budget state ≤ 10 ms; any dashboard panel ≤ 50 ms; incremental rollup of
a 10k-row batch ≤ 20 ms; full rollup rebuild ≤ 1 s; `comptroller budget check` end to end
≤ 1.5 s including start-up.

    uv run python bench/bench_analytics.py [--rows 10000000] [--repeat 15]

Prints best and median milliseconds per operation. Timings exclude the first (cold) run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_usage_db import DEFAULT, END, TIMEZONE, cached

from comptroller.analytics import (
    DuckDBReader,
    add_usage_rows,
    apply_usage_batch,
    budget_state,
    connect,
    insert_new_sql,
    rebuild_rollup,
    run_panel,
)
from comptroller.dashboards import load_panels

NOW = END


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm: first run pays for caches and the buffer pool
    runs = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - began) * 1000)
    return min(runs), statistics.median(runs)


def report(name: str, best: float, median: float, target: float | None) -> None:
    verdict = "" if target is None else ("ok" if median <= target else "OVER")
    shown = "" if target is None else f"{target:>8.0f}"
    print(f"{name:<44} {best:>9.1f} {median:>9.1f} {shown} {verdict}")


def batch(con: object, n: int, seq: int) -> pa.Table:
    # 10k rows of the last minute spread over every tenant, context and purpose (each
    # tenant in its own org, as in the generated data), as one collector flush brings.
    import duckdb

    assert isinstance(con, duckdb.DuckDBPyConnection)
    return con.sql(
        f"""
        WITH r AS (SELECT i, (random() * 50)::INT % 50 AS t FROM range({n}) r(i))
        SELECT 'bench-{seq}-' || i AS usage_id,
               $now::TIMESTAMPTZ - to_microseconds((random() * 60000000)::BIGINT) AS ts,
               'tenant-' || lpad(t::VARCHAR, 2, '0') AS tenant,
               'org-' || (t % 10)::VARCHAR AS org,
               (['web', 'batch', 'eval'])[(random() * 3)::INT % 3 + 1] AS context,
               (['chat', 'extraction', 'response', 'summarise'])[(random() * 4)::INT % 4 + 1] AS purpose,
               'openai' AS provider, 'gpt-4o-mini' AS request_model, 'gpt-4o-mini' AS response_model,
               500::BIGINT AS input_tokens, 100::BIGINT AS output_tokens,
               0.000135::DECIMAL(20, 10) AS cost_usd, 'genai-prices@bench' AS price_source,
               false AS estimated, 'ok' AS outcome, 5::DECIMAL(20, 10) AS budget_cap_usd,
               'comptroller' AS source
        FROM r
        """,
        params={"now": NOW},
    ).to_arrow_table()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=DEFAULT)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    db = cached(args.db, rows=args.rows)
    print(f"database: {db} ({db.stat().st_size / 1e6:.0f} MB), now = {NOW.isoformat()}")
    # Other work on the machine moves the medians: say how busy it was.
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{'operation':<44} {'best ms':>9} {'median':>9} {'target':>8}")

    con = connect(db, read_only=True)
    reader = DuckDBReader(con)
    best, median = timed(lambda: budget_state(reader, now=NOW, timezone=TIMEZONE), args.repeat)
    report("budget_state()", best, median, 10)
    panels = load_panels()
    for panel in panels:
        required = {p.name: "x" for p in panel.params if p.required}
        best, median = timed(
            lambda p=panel, r=required: run_panel(reader, p, now=NOW, timezone=TIMEZONE, **r),
            args.repeat,
        )
        report(f"panel {panel.name}", best, median, 50)
    con.close()

    work = db.with_name("work-" + db.name)
    shutil.copy(db, work)
    try:
        con = connect(work)
        seq = iter(range(1_000_000))
        inserts, applies, adds = [], [], []
        for round_ in range(2 * args.repeat + 2):
            table = batch(con, 10_000, next(seq))
            insert_sql = insert_new_sql("llm_usage", "incoming", table)
            con.execute("BEGIN TRANSACTION").fetchall()
            con.register("incoming", table)
            began = time.perf_counter()
            if round_ % 2:
                # The landing's fast path: keep exactly the rows inserted, add their sums.
                inserted = con.sql(f"{insert_sql} RETURNING *").to_arrow_table()
                landed = time.perf_counter()
                add_usage_rows(con, inserted, timezone=TIMEZONE)
                adds.append((time.perf_counter() - landed) * 1000)
            else:
                con.execute(insert_sql).fetchall()
                landed = time.perf_counter()
                apply_usage_batch(con, table, timezone=TIMEZONE)
                applies.append((time.perf_counter() - landed) * 1000)
            inserts.append((landed - began) * 1000)
            con.unregister("incoming")
            con.execute("COMMIT").fetchall()
        report(
            "insert 10k rows into llm_usage (context)",
            min(inserts[2:]),
            statistics.median(inserts[2:]),
            None,
        )
        report("add_usage_rows(10k new rows)", min(adds[1:]), statistics.median(adds[1:]), 20)
        report(
            "apply_usage_batch(10k rows, recompute)",
            min(applies[1:]),
            statistics.median(applies[1:]),
            20,
        )
        best, median = timed(
            lambda: rebuild_rollup(con, timezone=TIMEZONE), max(3, args.repeat // 5)
        )
        report("rebuild_rollup() full", best, median, 1000)
        con.close()
    finally:
        work.unlink(missing_ok=True)
        Path(str(work) + ".wal").unlink(missing_ok=True)

    env = {**os.environ, "COMPTROLLER_DATA_DIR": str(db.parent / "cli-data")}
    now = NOW.strftime("%Y-%m-%dT%H:%M:%S%z")

    def cli() -> None:
        subprocess.run(
            [sys.executable, "-m", "comptroller", "budget", "check", "--db", str(db), "--now", now],
            env=env,
            capture_output=True,
            check=False,
        )

    best, median = timed(cli, max(3, args.repeat // 3))
    report("comptroller budget check (process, e2e)", best, median, 1500)
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
