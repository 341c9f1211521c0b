"""Idempotent appends at scale: a primary key (in-memory ART index) against the anti-join.

    uv run python bench/bench_dedup.py [--rows 6000000] [--batch 8192]

Lands `--rows` spans in batches of `--batch` (what the collector's group commit lands), under
the collector's 256 MB DuckDB memory limit, each batch with some repeats inside, into two
files: one whose `(trace_id, span_id)` is a PRIMARY KEY (`INSERT OR IGNORE`), one with no
key and `analytics.insert_new_sql` (an anti-join in the batch's time range). Prints, per
million rows landed, the median and p99 insert time of the last batches and the process RSS,
and where the primary-key variant stops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from comptroller.analytics import insert_new_sql

_BASE_US = 1_790_000_000_000_000


def _rss_mb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def run(variant: str, rows: int, batch: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / f"{variant}.duckdb"))
        con.execute("SET memory_limit = '256MB'")
        key = ", PRIMARY KEY (trace_id, span_id)" if variant == "primary_key" else ""
        con.execute(
            "CREATE TABLE span_rows (trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL, "
            f"start_ts TIMESTAMPTZ NOT NULL, attributes VARCHAR{key})"
        )
        landed, times, marks = 0, [], []
        try:
            while landed < rows:
                data = con.sql(
                    f"SELECT md5((i + {landed})::VARCHAR) AS trace_id, "
                    "substr(md5(i::VARCHAR), 1, 16) AS span_id, "
                    f"make_timestamptz({_BASE_US} + (i + {landed}) * 1000) AS start_ts, "
                    f"repeat('a', 200) AS attributes FROM range({batch}) t(i)"
                ).to_arrow_table()
                data = pa.concat_tables([data, data.slice(0, 64)])  # repeats inside the batch
                con.register("batch", data)
                started = time.perf_counter()
                if variant == "primary_key":
                    con.execute("INSERT OR IGNORE INTO span_rows SELECT * FROM batch").fetchall()
                else:
                    sql = insert_new_sql("spans", "batch", data)
                    con.execute(sql).fetchall()
                times.append(time.perf_counter() - started)
                con.unregister("batch")
                landed += batch
                if landed // 1_000_000 > len(marks):
                    recent = sorted(times[-100:])
                    marks.append(
                        {
                            "rows": landed,
                            "insert_ms_p50": round(statistics.median(recent) * 1000, 1),
                            "insert_ms_p99": round(recent[int(0.99 * (len(recent) - 1))] * 1000, 1),
                            "rss_mb": _rss_mb(),
                        }
                    )
        except duckdb.Error as exc:
            return {
                "variant": variant,
                "failed_at_rows": landed,
                "error": str(exc).splitlines()[0],
                "marks": marks,
            }
        count = con.execute("SELECT count(*) FROM span_rows").fetchall()[0][0]
        con.close()
    return {"variant": variant, "rows": count, "marks": marks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--variant", choices=["anti_join", "primary_key", "both"], default="both")
    args = parser.parse_args()
    variants = ["anti_join", "primary_key"] if args.variant == "both" else [args.variant]
    for variant in variants:
        print(json.dumps(run(variant, args.rows, args.batch)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
