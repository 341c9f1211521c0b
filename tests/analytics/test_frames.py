from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from usage_db import insert_usage, usage_row

from comptroller.analytics import Analytics, DuckDBReader, connect, rebuild_rollup
from comptroller.errors import UsageError

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def ana(tmp_path: Path) -> Analytics:
    con = connect(tmp_path / "u.duckdb")
    insert_usage(
        con,
        [
            usage_row(NOW, tenant="a", purpose="chat", model="m1", cost="1.7", cap="2"),
            usage_row(NOW, tenant="b", purpose="chat", model="m2", cost="0.5"),
            usage_row(NOW - dt.timedelta(days=3), tenant="a", purpose="extract", cost="4"),
            usage_row(NOW - dt.timedelta(days=40), tenant="a", purpose="chat", cost="100"),
        ],
    )
    con.execute(
        "INSERT INTO profile_events (event_id, ts, action, purpose, version) VALUES "
        "('p1', ?, 'activated', 'chat', 2), ('p2', ?, 'activated', 'extract', 1)",
        [NOW - dt.timedelta(hours=1), NOW - dt.timedelta(hours=2)],
    ).fetchall()
    con.execute(
        "INSERT INTO circuit_events (event_id, ts, provider, model, state) VALUES "
        "('c1', ?, 'openai', 'm1', 'opened')",
        [NOW - dt.timedelta(minutes=5)],
    ).fetchall()
    rebuild_rollup(con, timezone="UTC")
    return Analytics(DuckDBReader(con, owned=True), now=NOW)


def test_spend_by_purpose_over_the_default_30_days(ana: Analytics) -> None:
    frame = ana.spend()
    assert isinstance(frame, pl.DataFrame)
    assert frame.select("purpose", "calls").rows() == [("extract", 1), ("chat", 2)]
    assert frame["cost_usd"].to_list() == [Decimal("4"), Decimal("2.2")]


def test_spend_by_several_dimensions_and_filters(ana: Analytics) -> None:
    frame = ana.spend(by=("tenant", "model"), since="today", tenant="a")
    assert frame.select("tenant", "model").rows() == [("a", "m1")]
    everything = ana.spend(by="day", since=dt.date(2026, 1, 1))
    assert everything["calls"].sum() == 4


def test_unknown_dimension_is_refused_naming_the_choices(ana: Analytics) -> None:
    with pytest.raises(UsageError, match=r"colour.*tenant"):
        ana.spend(by=("colour",))  # type: ignore[arg-type]


def test_budget_state_circuits_and_profile_history_frames(ana: Analytics) -> None:
    budgets = ana.budget_state()
    assert budgets.select("tenant", "status").rows() == [("a", "warning")]
    assert ana.circuit_events()["state"].to_list() == ["opened"]
    assert ana.profile_history("chat")["version"].to_list() == [2]
    assert len(ana.profile_history()) == 2
    assert len(ana.usage()) == 2
    assert ana.sql("SELECT 42 AS x")["x"].to_list() == [42]
