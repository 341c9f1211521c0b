from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from usage_db import insert_returning, insert_usage, usage_row

from comptroller.analytics import (
    add_usage_rows,
    apply_usage_batch,
    connect,
    rebuild_rollup,
    rollup_timezone,
)

ZONE = "Europe/Paris"
# 23:00 UTC on 2026-03-28 is local midnight in Paris, and the clocks change that night:
# rows either side of the boundary fall on different local days than their UTC dates.
BOUNDARY = dt.datetime(2026, 3, 28, 23, 0, tzinfo=dt.UTC)


def snapshot(
    con: duckdb.DuckDBPyConnection, table: str = "llm_usage_daily"
) -> list[tuple[Any, ...]]:
    rows = con.sql(f"SELECT * FROM {table} ORDER BY ALL").to_arrow_table().to_pylist()
    return [tuple(row.values()) for row in rows]


def snapshots(con: duckdb.DuckDBPyConnection) -> tuple[list[tuple[Any, ...]], ...]:
    return (
        snapshot(con),
        snapshot(con, "llm_budget_daily"),
        snapshot(con, "llm_usage_hourly"),
    )


row_strategy = st.fixed_dictionaries(
    {
        "minutes": st.integers(min_value=-36 * 60, max_value=36 * 60),
        "tenant": st.sampled_from(["a", "b", None]),
        "purpose": st.sampled_from(["chat", "extract"]),
        "model": st.sampled_from(["m1", "m2", None]),
        # The request model stands in for a missing response model.
        "request_model": st.sampled_from([None, "r1"]),
        "cost": st.sampled_from([None, "0.001", "0.25", "1.5"]),
        "cap": st.sampled_from([None, "2", "5"]),
        "outcome": st.sampled_from(["ok", "ok", "error"]),
        "estimated": st.booleans(),
        "tokens": st.integers(min_value=0, max_value=5000),
    }
)


def to_row(spec: dict[str, Any], usage_id: str) -> dict[str, Any]:
    # Distinct ids never share an instant: which cap is "latest" is then well defined.
    return usage_row(
        BOUNDARY
        + dt.timedelta(minutes=spec["minutes"], microseconds=int(usage_id.removeprefix("id"))),
        usage_id=usage_id,
        tenant=spec["tenant"],
        purpose=spec["purpose"],
        model=spec["model"],
        request_model=spec["request_model"],
        cost=spec["cost"],
        cap=spec["cap"],
        outcome=spec["outcome"],
        estimated=spec["estimated"],
        input_tokens=spec["tokens"],
    )


@pytest.fixture(scope="module")
def shared_con() -> Iterator[duckdb.DuckDBPyConnection]:
    # One in-memory database for every example (emptied before each): opening and
    # migrating a database per example would dominate the test's time.
    con = connect(":memory:")
    yield con
    con.close()


KEY_COLUMNS = [
    "ts",
    "tenant",
    "org",
    "context",
    "purpose",
    "provider",
    "request_model",
    "response_model",
]
KEY_SCHEMA = pa.schema(
    [("ts", pa.timestamp("us", tz="UTC"))] + [(c, pa.string()) for c in KEY_COLUMNS[1:]]
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.lists(
            st.tuples(row_strategy, st.integers(min_value=0, max_value=60), st.booleans()),
            min_size=0,
            max_size=12,
        ),
        min_size=1,
        max_size=6,
    ),
    deletes=st.lists(st.booleans(), min_size=6, max_size=6),
    fast=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_incremental_rollup_equals_full_recompute_with_late_and_duplicate_rows(
    shared_con: duckdb.DuckDBPyConnection,
    batches: list[list[tuple[dict[str, Any], int, bool]]],
    deletes: list[bool],
    fast: list[bool],
) -> None:
    # Ids drawn from a small range repeat across and within batches: redeliveries, which
    # the landing ignores (first write wins) and the rollup must not count twice. Minutes
    # spread over three local days, so later batches bring late rows for earlier days.
    # Some batches also delete rows (as the collector drops superseded derived rows). Each
    # batch takes the fast path (add the rows just inserted) or the recompute path.
    con = shared_con
    for table in (
        "llm_usage",
        "llm_usage_daily",
        "llm_budget_daily",
        "llm_usage_hourly",
        "comptroller_meta",
    ):
        con.execute(f"DELETE FROM {table}").fetchall()
    for number, batch in enumerate(batches):
        rows = [to_row(spec, f"id{n}") for spec, n, _ in batch]
        if fast[number]:
            add_usage_rows(con, insert_returning(con, rows), timezone=ZONE)
            parts = []
        else:
            parts = [insert_usage(con, rows).select(KEY_COLUMNS)]
        doomed = [f"id{n}" for _, n, drop in batch if drop]
        if deletes[number] and doomed:
            ids = {"ids": doomed}
            parts.append(
                con.sql(
                    f"SELECT {', '.join(KEY_COLUMNS)} FROM llm_usage WHERE usage_id IN (SELECT unnest($ids))",
                    params=ids,
                )
                .to_arrow_table()
                .cast(KEY_SCHEMA)
            )
            con.execute(
                "DELETE FROM llm_usage WHERE usage_id IN (SELECT unnest($ids))", ids
            ).fetchall()
        if parts:
            apply_usage_batch(con, pa.concat_tables(parts), timezone=ZONE)
    incremental = snapshots(con)
    rebuild_rollup(con, timezone=ZONE)
    assert incremental == snapshots(con)


def test_group_left_empty_by_a_deletion_leaves_the_rollup(
    shared_con: duckdb.DuckDBPyConnection,
) -> None:
    con = connect(":memory:")
    table = insert_usage(
        con, [usage_row(BOUNDARY, usage_id="gone", tenant="t1"), usage_row(BOUNDARY, tenant="t2")]
    )
    apply_usage_batch(con, table, timezone=ZONE)
    con.execute("DELETE FROM llm_usage WHERE usage_id = 'gone'").fetchall()
    apply_usage_batch(con, table.slice(0, 1), timezone=ZONE)
    assert [r[1] for r in snapshot(con)] == ["t2"]
    con.close()


def test_rows_either_side_of_local_midnight_land_on_their_local_days() -> None:
    con = connect(":memory:")
    rows = [
        usage_row(BOUNDARY - dt.timedelta(minutes=1), cost="1"),
        usage_row(BOUNDARY + dt.timedelta(minutes=1), cost="2"),
    ]
    apply_usage_batch(con, insert_usage(con, rows), timezone=ZONE)
    days = con.execute("SELECT day, cost_usd FROM llm_usage_daily ORDER BY day").fetchall()
    assert [(str(day), float(cost)) for day, cost in days] == [
        ("2026-03-28", 1.0),
        ("2026-03-29", 2.0),
    ]
    con.close()


def test_batch_given_by_table_name_updates_rollup(tmp_path: Any) -> None:
    con = connect(tmp_path / "u.duckdb")
    table = insert_usage(con, [usage_row(BOUNDARY, cost="0.5")])
    con.register("landed", table)
    assert apply_usage_batch(con, "landed", timezone="UTC") == 1
    assert con.execute("SELECT calls, cost_usd FROM llm_usage_daily").fetchall()[0][0] == 1
    con.close()


def test_unpriced_rows_are_counted_and_not_priced_at_zero_silently() -> None:
    con = connect(":memory:")
    rows = [usage_row(BOUNDARY, cost=None, model="mystery"), usage_row(BOUNDARY, cost="0.2")]
    apply_usage_batch(con, insert_usage(con, rows), timezone="UTC")
    got = con.execute(
        "SELECT model, calls, unpriced_calls, cost_usd FROM llm_usage_daily ORDER BY model"
    ).fetchall()
    assert [(m, c, u, float(x)) for m, c, u, x in got] == [
        ("gpt-4o-mini", 1, 0, 0.2),
        ("mystery", 1, 1, 0.0),
    ]
    con.close()


def test_other_time_zone_rebuilds_the_whole_rollup() -> None:
    con = connect(":memory:")
    apply_usage_batch(
        con, insert_usage(con, [usage_row(BOUNDARY - dt.timedelta(minutes=30))]), timezone="UTC"
    )
    assert rollup_timezone(con) == "UTC"
    apply_usage_batch(
        con, insert_usage(con, [usage_row(BOUNDARY + dt.timedelta(hours=30))]), timezone=ZONE
    )
    assert rollup_timezone(con) == ZONE
    incremental = snapshot(con)
    rebuild_rollup(con, timezone=ZONE)
    assert incremental == snapshot(con)
    # 22:30 UTC on the 28th is 23:30 in Paris: still the 28th; the later row is the 30th.
    assert [str(r[0]) for r in incremental] == ["2026-03-28", "2026-03-30"]
    con.close()


def test_rollup_inside_rolled_back_transaction_leaves_nothing() -> None:
    con = connect(":memory:")
    con.execute("BEGIN TRANSACTION")
    apply_usage_batch(con, insert_usage(con, [usage_row(BOUNDARY)]), timezone="UTC")
    con.execute("ROLLBACK")
    assert snapshot(con) == []
    con.close()


def test_unknown_time_zone_is_refused() -> None:
    from comptroller.errors import UsageError

    con = connect(":memory:")
    with pytest.raises(UsageError, match="Mars/Olympus"):
        rebuild_rollup(con, timezone="Mars/Olympus")
    con.close()


def test_rows_added_by_table_name_with_naive_utc_timestamps_match_a_rebuild() -> None:
    con = connect(":memory:")
    rows = [
        usage_row(BOUNDARY - dt.timedelta(minutes=5), cost="1", cap="3"),
        usage_row(BOUNDARY + dt.timedelta(minutes=5), cost=None, model=None, request_model="r"),
    ]
    inserted = insert_returning(con, rows)
    naive = inserted.set_column(
        inserted.schema.get_field_index("ts"),
        "ts",
        inserted.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us")),
    )
    con.register("landed", naive)
    assert add_usage_rows(con, "landed", timezone=ZONE) == 2
    incremental = snapshots(con)
    rebuild_rollup(con, timezone=ZONE)
    assert incremental == snapshots(con)
    assert [(str(r[0]), r[6]) for r in incremental[0]] == [
        ("2026-03-28", "gpt-4o-mini"),
        ("2026-03-29", "r"),
    ]
    con.close()


def test_hourly_rollup_cuts_local_hours_across_a_clock_change() -> None:
    # Paris moves from +1 to +2 at 01:00 UTC on 2026-03-29: 00:30 UTC is 01:30 local,
    # 01:30 UTC is 03:30 local (02:00-03:00 local does not exist that night).
    con = connect(":memory:")
    rows = [
        usage_row(BOUNDARY - dt.timedelta(minutes=1), cost="1", purpose="chat"),
        usage_row(BOUNDARY + dt.timedelta(minutes=90), cost="2", purpose="chat"),
        usage_row(BOUNDARY + dt.timedelta(minutes=150), cost="4", purpose="chat"),
        usage_row(BOUNDARY + dt.timedelta(minutes=155), cost=None, purpose="chat"),
    ]
    add_usage_rows(con, insert_returning(con, rows), timezone=ZONE)
    got = con.execute(
        "SELECT hour::VARCHAR, calls, unpriced_calls, cost_usd::DOUBLE FROM llm_usage_hourly "
        "ORDER BY hour"
    ).fetchall()
    assert got == [
        ("2026-03-28 23:00:00", 1, 0, 1.0),
        ("2026-03-29 01:00:00", 1, 0, 2.0),
        ("2026-03-29 03:00:00", 2, 1, 4.0),
    ]
    incremental = snapshots(con)
    rebuild_rollup(con, timezone=ZONE)
    assert incremental == snapshots(con)
    con.close()


def test_migration_rolls_up_the_hours_of_rows_landed_before_it(tmp_path: Any) -> None:
    from comptroller.analytics import MIGRATIONS, migrate

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    # A version-5 database with rows and a Paris rollup, as an older comptroller left it.
    con.execute(
        "CREATE TABLE comptroller_schema (version INTEGER NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp, description VARCHAR)"
    )
    for migration in MIGRATIONS[:5]:
        con.execute(migration.sql)
        con.execute(
            "INSERT INTO comptroller_schema (version) VALUES (?)", [migration.version]
        ).fetchall()
    rows = [
        usage_row(BOUNDARY - dt.timedelta(minutes=1), cost="1"),
        usage_row(BOUNDARY + dt.timedelta(minutes=90), cost="2"),
    ]
    insert_usage(con, rows)
    con.execute(
        "INSERT INTO comptroller_meta VALUES ('rollup_timezone', 'Europe/Paris')"
    ).fetchall()
    assert migrate(con, path=path)[:2] == [6, 7]
    migrated = snapshot(con, "llm_usage_hourly")
    rebuild_rollup(con, timezone=ZONE)
    assert migrated == snapshot(con, "llm_usage_hourly")
    assert [str(row[0]) for row in migrated] == ["2026-03-28 23:00:00", "2026-03-29 01:00:00"]
    con.close()


def test_the_rollups_count_a_reservation_as_unpriced_as_reprice_does(tmp_path: Any) -> None:
    """A row charged the control plane's reservation for want of a price is unpriced in the
    rollups (daily, budget, hourly) as in `unpriced_calls`, incrementally and after the
    migration that recounts the rollups an older comptroller wrote."""
    from comptroller.analytics import MIGRATIONS, DuckDBReader, migrate
    from comptroller.analytics._unpriced import unpriced_calls

    rows = [
        usage_row(BOUNDARY, cost="0.5", estimated=True, price_source="reservation"),
        usage_row(BOUNDARY, cost=None, price_source="unpriced"),
        usage_row(BOUNDARY, cost="0.25", price_source="genai-prices"),
    ]

    def counts(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
        return tuple(
            con.execute(f"SELECT sum(unpriced_calls) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("llm_usage_daily", "llm_budget_daily", "llm_usage_hourly")
        )

    con = duckdb.connect(str(tmp_path / "new.duckdb"))
    migrate(con)
    add_usage_rows(con, insert_returning(con, rows), timezone=ZONE)
    assert counts(con) == (2, 2, 2)
    con.close()

    # A version-6 file whose rollup counted only the NULL cost.
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE comptroller_schema (version INTEGER NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp, description VARCHAR)"
    )
    for migration in MIGRATIONS[:6]:
        con.execute(migration.sql)
        con.execute(
            "INSERT INTO comptroller_schema (version) VALUES (?)", [migration.version]
        ).fetchall()
    insert_usage(con, rows)
    rebuild_rollup(con, timezone=ZONE)
    con.execute("UPDATE llm_usage_daily SET unpriced_calls = 1").fetchall()
    con.execute("UPDATE llm_budget_daily SET unpriced_calls = 1").fetchall()
    assert counts(con)[:2] == (1, 1)

    assert migrate(con, path=path)[0] == 7
    assert counts(con) == (2, 2, 2)
    reader = DuckDBReader(con)
    assert sum(u.calls for u in unpriced_calls(reader)) == 2
    con.close()
