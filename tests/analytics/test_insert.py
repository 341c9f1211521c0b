"""Idempotent appends without a primary key: each key once, whatever was landed before."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from comptroller.analytics import connect, insert_new, insert_new_sql, time_bounds

T0 = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.UTC)


def _usage(ids: list[str], minutes: list[int]) -> pa.Table:
    return pa.table(
        {
            "usage_id": ids,
            "ts": pa.array(
                [T0 + dt.timedelta(minutes=m) for m in minutes], pa.timestamp("us", "UTC")
            ),
            "price_source": ["fallback"] * len(ids),
            "outcome": ["ok"] * len(ids),
            "source": ["comptroller"] * len(ids),
        }
    )


def test_rows_already_landed_and_repeats_within_a_batch_land_once(tmp_path: Path) -> None:
    con = connect(tmp_path / "u.duckdb")
    first = insert_new(con, "llm_usage", _usage(["a", "b", "b"], [0, 1, 1]), returning="usage_id")
    assert first is not None
    assert sorted(first.column("usage_id").to_pylist()) == ["a", "b"]
    # Many rows later (other row groups), the oldest rows re-sent with new ones.
    for chunk in range(3):
        ids = [f"x{chunk}-{i}" for i in range(50_000)]
        insert_new(con, "llm_usage", _usage(ids, [10 + chunk] * len(ids)))
    again = insert_new(con, "llm_usage", _usage(["a", "b", "c"], [0, 1, 30]), returning="usage_id")
    assert again is not None
    assert again.column("usage_id").to_pylist() == ["c"]
    counts = con.execute(
        "SELECT usage_id, count(*) FROM llm_usage WHERE usage_id IN ('a', 'b', 'c') GROUP BY 1 "
        "ORDER BY 1"
    ).fetchall()
    assert counts == [("a", 1), ("b", 1), ("c", 1)]
    con.close()


def test_the_search_for_duplicates_is_bounded_by_the_batch_time_range() -> None:
    batch = _usage(["a", "b"], [5, 2])
    bounds = time_bounds(batch, "llm_usage")
    assert bounds == (T0 + dt.timedelta(minutes=2), T0 + dt.timedelta(minutes=5))
    sql = insert_new_sql("llm_usage", "src", batch, columns=["usage_id", "ts"])
    assert "t.ts BETWEEN TIMESTAMPTZ '2026-11-21T09:02:00+00:00'" in sql
    assert "AND TIMESTAMPTZ '2026-11-21T09:05:00+00:00'" in sql
    assert time_bounds(_usage([], []), "llm_usage") is None


@pytest.mark.parametrize("table", ["llm_usage", "spans"])
def test_every_growing_table_has_a_dedup_key(tmp_path: Path, table: str) -> None:
    con = connect(tmp_path / "k.duckdb")
    keys = con.execute(
        "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = ? "
        "AND constraint_type = 'PRIMARY KEY'",
        [table],
    ).fetchall()
    assert keys == []  # no in-memory index that grows with the table
    con.close()


def test_a_batch_known_unique_skips_the_dedup_within_it_and_a_repeat_is_noticed(
    tmp_path: Path,
) -> None:
    from comptroller.analytics import keys_unique

    assert keys_unique(_usage(["a", "b"], [0, 1]), "llm_usage")
    assert not keys_unique(_usage(["a", "a"], [0, 0]), "llm_usage")
    spans = pa.table({"trace_id": ["t1", "t1", "t2"], "span_id": ["s1", "s2", "s1"]})
    assert keys_unique(spans, "spans")
    assert not keys_unique(pa.concat_tables([spans, spans.slice(1, 1)]), "spans")
    assert "QUALIFY" not in insert_new_sql("llm_usage", "src", _usage(["a", "b"], [0, 0]))
    assert "QUALIFY" in insert_new_sql("llm_usage", "src", _usage(["a", "a"], [0, 0]))
