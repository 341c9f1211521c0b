"""Reading a PostgreSQL ledger: budget state, panels and raw SQL through `PgReader`.

    uv run python bench/pg_reading.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--rows 1000000] [--batch 16384] [--keys 300] [--queries 50] [--keep]

Lands `--rows` usage rows of today (bench/pg_landing.py's batches, through `PgLander`) into
a fresh schema, then times, each `--queries` times (p50 and p99, ms):

* `budget_state` through `PgReader`: the panel runs in PostgreSQL over `llm_budget_daily`
  (the reader's translated path), beside `budget_state_pg` (the same, without the reader)
  and beside the same panel SQL forced through the DuckDB path (the rollup and the day's
  refusals fetched as Arrow into the in-process DuckDB);
* the `recent_calls` panel over the last minute of rows, with its time range pushed into
  the fetch, and forced without the pushdown (every llm_usage row fetched);
* `SELECT count(*), sum(cost_usd) FROM llm_usage` through the reader (every row fetched,
  one column), and a `SELECT *` over it (every row, every column);
* the same full fetch as three roles: the owner (not subject to row-level security), an ops
  reader bound to every row and an org reader bound to one org of seven (the policies'
  cost), each role created here and dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pg_landing import usage_batch

from comptroller.analytics import budget_state, builtin_panels, run_panel
from comptroller.analytics._pg_budget import budget_state_pg
from comptroller.analytics._pg_reader import PgReader
from comptroller.analytics._pg_schema import connect_pg, grant_reader, libpq_url
from comptroller.collector._land_pg import PgLander
from comptroller.collector._normalise import Batch


def bench_now() -> dt.datetime:
    """The instant the rows lead up to (over the hour before it) and the reads judge:
    now, or 01:01 UTC today before then, so that every row is today's."""
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(dt.datetime.now(dt.UTC), today + dt.timedelta(hours=1, minutes=1))


def fill(url: str, schema: str, rows: int, batch: int, keys: int, now: dt.datetime) -> float:
    templates = [usage_batch("r", i * batch, batch, keys, now) for i in range(4)]
    suffix = pa.array([""] * batch)
    con = connect_pg(url, schema=schema)
    lander = PgLander(con, collector_id="bench-reading", budget_events_every_s=3600)
    began = time.perf_counter()
    for position, first in enumerate(range(0, rows, batch), start=1):
        size = min(batch, rows - first)
        table = templates[position % len(templates)].slice(0, size)
        ids = pc.binary_join_element_wise(
            table.column("usage_id"), pa.scalar(f"-{position}"), suffix.slice(0, size)
        )
        lander.land(
            [Batch(tables={"llm_usage": table.set_column(0, "usage_id", ids)})],
            positions=[position],
        )
    elapsed = time.perf_counter() - began
    cur = con.cursor()
    cur.execute("ANALYZE")
    cur.close()
    con.commit()
    con.close()
    return elapsed


def timed(run: Callable[[], object], queries: int) -> dict[str, float]:
    run()  # warm: connections, the type catalog, parsed statements
    values = []
    for _ in range(queries):
        began = time.perf_counter()
        run()
        values.append((time.perf_counter() - began) * 1000)
    values.sort()
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(values[max(0, int(len(values) * 0.99) - 1)], 2),
    }


def _admin(url: str, *statements: str) -> None:
    con = connect_pg(url, migrate=False)
    cur = con.cursor()
    for statement in statements:
        cur.execute(statement)
    cur.close()
    con.commit()
    con.close()


def _as(url: str, role: str, schema: str) -> str:
    parts = libpq_url(url).split("://", 1)[1]
    host = parts.split("@", 1)[-1].split("?")[0]
    return f"postgresql://{role}@{host}?schema={schema}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=16_384)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the schema and roles")
    args = parser.parse_args()
    schema = f"bench_read_{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:6]
    ops, org = f"bench_ops_{tag}", f"bench_org_{tag}"
    report: dict[str, Any] = {"schema": schema, "rows": args.rows}
    _admin(args.url, f"CREATE ROLE {ops} LOGIN", f"CREATE ROLE {org} LOGIN")
    url = f"{libpq_url(args.url)}{'&' if '?' in libpq_url(args.url) else '?'}schema={schema}"
    try:
        now = bench_now()
        report["landing_s"] = round(
            fill(args.url, schema, args.rows, args.batch, args.keys, now), 1
        )
        print(json.dumps(report), flush=True)
        con = connect_pg(url)
        grant_reader(con, ops)
        grant_reader(con, org, org="org-3")
        panels = builtin_panels()
        state_sql = panels["budget_state"].sql
        q = args.queries
        with PgReader(url) as reader:
            params = panels["budget_state"].bind({}, now=now, timezone="UTC")
            report["budget_state"] = {
                "keys": len(budget_state(reader, now=now)),
                "through_reader_in_postgres": timed(lambda: budget_state(reader, now=now), q),
                "budget_state_pg": timed(lambda: budget_state_pg(con, now=now), q),
                # A trailing space: not the shipped panel's text, so the DuckDB path.
                "panel_via_duckdb": timed(lambda: reader.query(state_sql + " ", params), q),
            }
            print(json.dumps(report["budget_state"]), flush=True)
            recent = panels["recent_calls"]
            # The template batches' rows span a few minutes: the last minute of them.
            newest = reader.query("SELECT max(ts) FROM llm_usage").column(0)[0].as_py()
            since = newest - dt.timedelta(minutes=1)
            bound = recent.bind({"since": since}, now=now, timezone="UTC")
            before = reader.fetched_rows
            rows = run_panel(reader, recent, now=now, since=since).num_rows
            pushed = reader.fetched_rows - before
            report["recent_calls_last_minute"] = {
                "rows_shown": rows,
                "rows_fetched_pushed": pushed,
                "pushed": timed(lambda: run_panel(reader, recent, now=now, since=since), q),
                "not_pushed": timed(lambda: reader.query(recent.sql + " ", bound), max(3, q // 10)),
            }
            print(json.dumps(report["recent_calls_last_minute"]), flush=True)
        full = "SELECT count(*) AS n, sum(cost_usd) AS usd FROM llm_usage"
        star = "SELECT count(*) AS n FROM (SELECT * FROM llm_usage)"
        with PgReader(url) as reader:
            report["every_column_sql"] = {
                "rows": reader.query(star).column(0)[0].as_py(),
                **timed(lambda: reader.query(star), max(3, q // 10)),
            }
            print(json.dumps({"every_column_sql": report["every_column_sql"]}), flush=True)
        report["full_scan_sql"] = {}
        for name, target in (
            ("owner", url),
            ("ops_role_rls", _as(args.url, ops, schema)),
            ("org_role_rls", _as(args.url, org, schema)),
        ):
            with PgReader(target) as reader:
                n = reader.query(full).column(0)[0].as_py()
                report["full_scan_sql"][name] = {
                    "rows": n,
                    **timed(lambda r=reader: r.query(full), max(3, q // 10)),
                }
                print(json.dumps({name: report["full_scan_sql"][name]}), flush=True)
        con.close()
    finally:
        if not args.keep:
            _admin(
                args.url,
                f"DROP SCHEMA IF EXISTS {schema} CASCADE",
                f"DROP OWNED BY {ops}",
                f"DROP OWNED BY {org}",
                f"DROP ROLE {ops}",
                f"DROP ROLE {org}",
            )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
