"""Landing into a PostgreSQL ledger: rows/s with 1 and 2 landers, budget-state latency.

    uv run python bench/pg_landing.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--rows 400000] [--batch 8192] [--keys 300] [--queries 300] [--keep]

Each lander is a process of its own (as a collector is) with its own collector id, landing
`--rows` usage rows (llm_usage's declared Arrow schema, what the collector's batches hold)
in batches of `--batch` rows through `PgLander.land`: binary COPY into a staging table,
`INSERT … ON CONFLICT DO NOTHING`, the three rollup upserts and the ledger position, one
transaction per batch. Four template batches are built before the clock
starts; each batch landed gets ids of its own (an Arrow rewrite of one column, inside the clock). Rows/s is rows landed over
the wall time from the first lander's start to the last one's end; with 2 landers each lands
`--rows` (so twice the rows), concurrently, into the same tables and rollup groups.

Then `budget_state_pg` (the `budget_state` rows, from `llm_budget_daily`) is timed
`--queries` times over the ledger left by both runs (`--keys` budget keys a day), with the
raw SQL alone beside it. Each run lands into a fresh schema, dropped at the end unless
`--keep`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import statistics
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from comptroller.analytics._panels import builtin_panels
from comptroller.analytics._pg_budget import PgPanelReader, budget_state_pg
from comptroller.analytics._pg_schema import connect_pg
from comptroller.analytics._tables import LLM_USAGE, arrow_schema
from comptroller.collector._land_pg import PgLander
from comptroller.collector._normalise import Batch

_SCHEMA = arrow_schema(LLM_USAGE)


def usage_batch(prefix: str, start: int, rows: int, keys: int, now: dt.datetime) -> pa.Table:
    """`rows` usage rows of today, ids `prefix-i`, over `keys` budget keys."""
    ids = range(start, start + rows)
    base = int(now.timestamp() * 1_000_000) - 3_600_000_000
    columns: dict[str, Any] = {name: [None] * rows for name in _SCHEMA.names}
    columns.update(
        usage_id=[f"{prefix}-{i}" for i in ids],
        ts=pa.array([base + (i * 7919) % 3_600_000_000 for i in ids], pa.timestamp("us", "UTC")),
        trace_id=[f"{i:032x}" for i in ids],
        span_id=[f"{i:016x}" for i in ids],
        service_name=["bench"] * rows,
        tenant=[f"tenant-{i % keys % 60}" for i in ids],
        org=[f"org-{i % keys % 60 % 7}" for i in ids],
        context=[f"ctx-{i % keys // 60}" for i in ids],
        purpose=[
            ("reasoning", "scoring", "agent_turn", "embedding", "codegen")[i % 5] for i in ids
        ],
        operation=["chat"] * rows,
        provider=[("anthropic", "openai", "google")[i % 3] for i in ids],
        request_model=[("m-large", "m-small", "m-mini", "m-flash")[i % 4] for i in ids],
        response_model=[("m-large", "m-small", "m-mini", "m-flash")[i % 4] for i in ids],
        input_tokens=[1000 + i % 5000 for i in ids],
        output_tokens=[100 + i % 900 for i in ids],
        cache_read_tokens=[i % 300 for i in ids],
        cache_write_tokens=[0] * rows,
        reasoning_tokens=[i % 50 for i in ids],
        cost_usd=[f"0.{(i * 37) % 10_000_000:07d}" for i in ids],
        price_source=["genai-prices@bench"] * rows,
        estimated=[False] * rows,
        outcome=["ok" if i % 17 else "error" for i in ids],
        attempt=[1] * rows,
        fallback_depth=[0] * rows,
        latency_ms=[float(200 + i % 800) for i in ids],
        budget_cap_usd=["50"] * rows,
        source=["comptroller"] * rows,
    )
    return pa.table(columns, schema=_SCHEMA)


def _lander(
    url: str, schema: str, cid: str, rows: int, batch: int, keys: int, start: Any, out: Any
) -> None:
    now = dt.datetime.now(dt.UTC)
    # A few template batches; each landed batch gets ids of its own (an Arrow rewrite of
    # one column, ~1 ms, inside the clock), so memory stays flat whatever --rows says.
    templates = [usage_batch(cid, i * batch, batch, keys, now) for i in range(4)]
    suffix = pa.array([""] * batch)
    con = connect_pg(url, schema=schema)
    lander = PgLander(con, collector_id=cid)
    start.wait()
    began = time.perf_counter()
    landed = 0
    for position, first in enumerate(range(0, rows, batch), start=1):
        size = min(batch, rows - first)
        table = templates[position % len(templates)].slice(0, size)
        ids = pc.binary_join_element_wise(
            table.column("usage_id"), pa.scalar(f"-{position}"), suffix.slice(0, size)
        )
        table = table.set_column(0, "usage_id", ids)
        result = lander.land([Batch(tables={"llm_usage": table})], positions=[position])
        landed += result.inserted.get("llm_usage", 0)
    elapsed = time.perf_counter() - began
    out.put({"cid": cid, "rows": landed, "s": elapsed, "timings": lander.timings})
    con.close()


def land(url: str, schema: str, landers: int, rows: int, batch: int, keys: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    run = uuid.uuid4().hex[:6]
    procs = [
        ctx.Process(target=_lander, args=(url, schema, f"{run}-{n}", rows, batch, keys, start, out))
        for n in range(landers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # let them build their batches
    results: list[dict[str, Any]] = []
    began = time.perf_counter()
    start.set()
    for _ in procs:
        results.append(out.get(timeout=3600))
    wall = max(r["s"] for r in results)
    for proc in procs:
        proc.join()
    del began
    total = sum(r["rows"] for r in results)
    return {
        "landers": landers,
        "rows": total,
        "wall_s": round(wall, 2),
        "rows_per_s": round(total / wall),
        "per_lander_rows_per_s": [round(r["rows"] / r["s"]) for r in results],
        "phase_s": [{k: round(v, 2) for k, v in r["timings"].items()} for r in results],
    }


def budget_latency(url: str, schema: str, queries: int) -> dict[str, Any]:
    con = connect_pg(url, schema=schema)
    reader = PgPanelReader(con)
    panel = builtin_panels()["budget_state"]
    now = dt.datetime.now(dt.UTC)
    states = budget_state_pg(con, now=now)
    full, raw = [], []
    for _ in range(queries):
        began = time.perf_counter()
        budget_state_pg(con, now=now)
        full.append((time.perf_counter() - began) * 1000)
        params = panel.bind({}, now=now, timezone="UTC")
        began = time.perf_counter()
        reader.query(panel.sql, params)
        raw.append((time.perf_counter() - began) * 1000)
    (count,) = _one(con, "SELECT count(*) FROM llm_usage")
    con.close()

    def pct(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        return {
            "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(values[int(len(values) * 0.99) - 1], 3),
        }

    return {
        "usage_rows": count,
        "budget_keys": len(states),
        "budget_state_pg": pct(full),
        "panel_sql_only": pct(raw),
    }


def _one(con: Any, sql: str) -> tuple[Any, ...]:
    cur = con.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    cur.close()
    con.commit()
    return tuple(row or ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=400_000, help="rows per lander")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the schema")
    args = parser.parse_args()
    schema = f"bench_pg_{uuid.uuid4().hex[:8]}"
    connect_pg(args.url, schema=schema).close()
    report: dict[str, Any] = {"schema": schema, "batch": args.batch}
    try:
        report["one_lander"] = land(args.url, schema, 1, args.rows, args.batch, args.keys)
        print(json.dumps(report["one_lander"]), flush=True)
        report["two_landers"] = land(args.url, schema, 2, args.rows, args.batch, args.keys)
        print(json.dumps(report["two_landers"]), flush=True)
        report["budget_state"] = budget_latency(args.url, schema, args.queries)
        print(json.dumps(report["budget_state"]), flush=True)
    finally:
        if not args.keep:
            con = connect_pg(args.url, migrate=False)
            cur = con.cursor()
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            cur.close()
            con.commit()
            con.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
