"""Generate (and cache) the analytics benchmark database.

10 million usage rows over 30 days, 50 tenants, 8 purposes, 3 contexts, 7 models — built
inside DuckDB with `range()` and `random()` so it takes seconds, appended in time order as a
collector would, then rolled up. Cached under `build/bench/`; delete the file to rebuild.

    uv run python bench/gen_usage_db.py [--rows 10000000] [--out build/bench/usage-10m.duckdb]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from comptroller.analytics import connect, rebuild_rollup

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "build" / "bench" / "usage-10m.duckdb"
END = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
"""The generated data ends here: benchmarks use it as "now"."""
DAYS = 30
TIMEZONE = "UTC"

_GENERATE = """
INSERT INTO llm_usage (
    usage_id, ts, trace_id, span_id, service_name, tenant, org, context, purpose, operation,
    provider, request_model, response_model, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, cost_usd, price_source, estimated, outcome,
    error_type, attempt, fallback_depth, profile_id, profile_version, latency_ms,
    budget_cap_usd, source)
WITH base AS (
    SELECT
        i,
        $start + to_microseconds(($span_us::DOUBLE * i / $rows)::BIGINT) AS ts,
        (random() * 50)::INT % 50 AS t,
        (random() * 8)::INT % 8 AS p,
        (random() * 3)::INT % 3 AS c,
        (random() * 7)::INT % 7 AS m,
        (random() * 4000)::BIGINT + 50 AS inp,
        (random() * 800)::BIGINT + 1 AS outp,
        random() AS r
    FROM range($lo, $hi) r(i)
), priced AS (
    SELECT *,
        (['openai', 'openai', 'openai', 'anthropic', 'anthropic', 'google', 'ollama'])[m + 1] AS provider,
        (['gpt-4o-mini', 'gpt-4o', 'o3-mini', 'claude-3-5-haiku-latest', 'claude-sonnet-4-0',
          'gemini-2.0-flash', 'llama3'])[m + 1] AS model,
        ([0.15, 2.5, 1.1, 0.8, 3.0, 0.1, 0.0])[m + 1]::DECIMAL(20, 10) AS in_mtok,
        ([0.6, 10.0, 4.4, 4.0, 15.0, 0.4, 0.0])[m + 1]::DECIMAL(20, 10) AS out_mtok,
        (inp * (r * 0.5)::DOUBLE)::BIGINT AS cached
    FROM base
)
SELECT
    format('{:016x}', i),
    ts,
    format('{:032x}', i),
    format('{:016x}', i),
    'bench-app',
    'tenant-' || lpad(t::VARCHAR, 2, '0'),
    'org-' || (t % 10)::VARCHAR,
    (['web', 'batch', 'eval'])[c + 1],
    (['chat', 'extraction', 'query_understanding', 'response', 'reflection', 'background',
      'embedding', 'summarise'])[p + 1],
    CASE WHEN p = 6 THEN 'embeddings' ELSE 'chat' END,
    provider, model, model,
    inp, outp, cached, 0, CASE WHEN m = 2 THEN outp // 2 ELSE 0 END,
    CASE WHEN m = 6 THEN NULL
         ELSE ((inp * in_mtok + outp * out_mtok) / 1000000)::DECIMAL(20, 10) END,
    CASE WHEN m = 6 THEN 'unpriced' ELSE 'genai-prices@bench' END,
    r < 0.002,
    CASE WHEN r > 0.98 THEN 'error' ELSE 'ok' END,
    CASE WHEN r > 0.98 THEN 'RateLimitError' END,
    1 + (r > 0.98)::INT, 0, 'profile-' || p::VARCHAR, 1,
    200 + r * 3000,
    -- Every tenant's chat and extraction budgets have a daily cap; some near it.
    CASE WHEN p IN (0, 1) THEN (2 + (t % 7) * 3)::DECIMAL(20, 10) END,
    'comptroller'
FROM priced
"""


def generate(path: Path, *, rows: int = 10_000_000, chunk: int = 2_000_000) -> Path:
    """Build the database at `path` (replacing it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_suffix(path.suffix + ".wal")):
        stale.unlink(missing_ok=True)
    con = connect(path)
    try:
        con.execute("SELECT setseed(0.42)").fetchall()
        start = END - dt.timedelta(days=DAYS)
        span_us = int(dt.timedelta(days=DAYS).total_seconds() * 1_000_000)
        for lo in range(0, rows, chunk):
            t0 = time.perf_counter()
            con.execute(
                _GENERATE,
                {
                    "start": start,
                    "span_us": span_us,
                    "rows": rows,
                    "lo": lo,
                    "hi": min(rows, lo + chunk),
                },
            ).fetchall()
            print(f"  rows {lo:,}..: {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        rebuild_rollup(con, timezone=TIMEZONE)
        print(f"  rollup: {time.perf_counter() - t0:.1f} s", flush=True)
        con.execute("CHECKPOINT").fetchall()
    finally:
        con.close()
    return path


def cached(path: Path = DEFAULT, *, rows: int = 10_000_000) -> Path:
    """The benchmark database, generated on first use."""
    if not path.exists():
        generate(path, rows=rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, default=DEFAULT)
    args = parser.parse_args()
    began = time.perf_counter()
    generate(args.out, rows=args.rows)
    print(f"{args.out}: {args.rows:,} rows in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
