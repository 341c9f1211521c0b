from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import duckdb
import pytest
from usage_db import insert_usage, usage_row

from comptroller.analytics import (
    DuckDBReader,
    apply_usage_batch,
    budget_state,
    connect,
    record_budget_events,
)

ZONE = "Europe/Paris"
# 10:00 in Paris: 10 hours of the local day gone, 14 to go.
NOW = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def mem() -> duckdb.DuckDBPyConnection:
    return connect(":memory:")


def land(con: duckdb.DuckDBPyConnection, rows: list[dict[str, object]]) -> None:
    apply_usage_batch(con, insert_usage(con, rows), timezone=ZONE)


def test_budget_state_reports_spend_cap_burn_and_projection_for_capped_keys(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(
        mem,
        [
            usage_row(NOW - dt.timedelta(hours=1), cap="10", cost="2.5"),
            usage_row(NOW - dt.timedelta(hours=2), cap="10", cost="2.5", model="gpt-4o"),
            usage_row(NOW, cap=None, cost="100", tenant="uncapped"),
            # Yesterday in Paris (23:30 local on the 20th): not today's spend.
            usage_row(dt.datetime(2026, 11, 20, 22, 30, tzinfo=dt.UTC), cap="10", cost="9"),
        ],
    )
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)
    assert state.key == ("acme", "ctx", "chat")
    assert state.day == dt.date(2026, 11, 21)
    assert state.spent_usd == Decimal("5")
    assert state.cap_usd == Decimal("10")
    assert state.utilisation == pytest.approx(0.5)
    assert state.burn_usd_per_hour == pytest.approx(0.5)
    assert state.projected_usd == pytest.approx(5 + 0.5 * 14)
    assert state.status == "ok"
    assert state.calls == 2


def test_unpriced_usage_is_counted_with_its_models_never_zero_silently(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(
        mem,
        [
            usage_row(NOW, cap="1", cost="0.1"),
            usage_row(NOW, cap="1", cost=None, model="zeta-1"),
            usage_row(NOW, cap="1", cost=None, model="alpha-2"),
            usage_row(NOW, cap="1", cost=None, model="alpha-2"),
        ],
    )
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)
    assert state.unpriced_calls == 3
    assert state.unpriced_models == ("alpha-2", "zeta-1")
    assert state.spent_usd == Decimal("0.1")


def test_latest_cap_in_force_wins_when_the_cap_changed_during_the_day(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(
        mem,
        [
            usage_row(NOW - dt.timedelta(hours=3), cap="1", cost="0.9", model="a"),
            usage_row(NOW - dt.timedelta(hours=1), cap="3", cost="0.3", model="b"),
        ],
    )
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)
    assert state.cap_usd == Decimal("3")
    assert state.status == "ok"


@pytest.mark.parametrize(
    ("spent", "warn_ratio", "status"),
    [("0.79", 0.8, "ok"), ("0.8", 0.8, "warning"), ("0.5", 0.5, "warning"), ("1", 0.8, "exceeded")],
)
def test_status_follows_warn_ratio_and_cap(
    mem: duckdb.DuckDBPyConnection, spent: str, warn_ratio: float, status: str
) -> None:
    land(mem, [usage_row(NOW, cap="1", cost=spent)])
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE, warn_ratio=warn_ratio)
    assert state.status == status


def events(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute(
        "SELECT kind, tenant, day::VARCHAR FROM budget_events ORDER BY kind, tenant"
    ).fetchall()


def test_budget_events_recorded_once_per_day_and_key(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, cap="1", cost="0.85")])
    first = record_budget_events(mem, now=NOW, timezone=ZONE)
    assert [e.kind for e in first] == ["warning"]
    assert record_budget_events(mem, now=NOW, timezone=ZONE) == []
    land(mem, [usage_row(NOW, cap="1", cost="0.2")])
    assert [e.kind for e in record_budget_events(mem, now=NOW, timezone=ZONE)] == ["exceeded"]
    assert record_budget_events(mem, now=NOW, timezone=ZONE) == []
    assert events(mem) == [("exceeded", "acme", "2026-11-21"), ("warning", "acme", "2026-11-21")]
    attrs = json.loads(
        mem.execute("SELECT attributes FROM budget_events WHERE kind = 'warning'").fetchall()[0][0]
    )
    assert attrs["utilisation"] == pytest.approx(0.85)


def test_jump_past_the_cap_records_both_crossings(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, cap="1", cost="5")])
    assert sorted(e.kind for e in record_budget_events(mem, now=NOW, timezone=ZONE)) == [
        "exceeded",
        "warning",
    ]


def test_a_new_day_records_again(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, cap="1", cost="1")])
    record_budget_events(mem, now=NOW, timezone=ZONE)
    tomorrow = NOW + dt.timedelta(days=1)
    land(mem, [usage_row(tomorrow, cap="1", cost="1")])
    assert len(record_budget_events(mem, now=tomorrow, timezone=ZONE)) == 2
    assert len(events(mem)) == 4


def test_crossing_already_recorded_by_the_control_plane_is_not_repeated(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    mem.execute(
        "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose) "
        "VALUES ('cp-1', ?, '2026-11-21', 'exceeded', 'acme', 'ctx', 'chat')",
        [NOW],
    ).fetchall()
    land(mem, [usage_row(NOW, cap="1", cost="3")])
    assert [e.kind for e in record_budget_events(mem, now=NOW, timezone=ZONE)] == ["warning"]


def test_events_recorded_inside_the_landing_transaction_see_its_rows(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    mem.execute("BEGIN TRANSACTION")
    land(mem, [usage_row(NOW, cap="1", cost="3")])
    assert len(record_budget_events(mem, now=NOW, timezone=ZONE)) == 2
    mem.execute("COMMIT")
    assert len(events(mem)) == 2
