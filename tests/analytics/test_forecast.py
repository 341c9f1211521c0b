"""Forecasts of spend (`forecast`, the `forecast` panel) over hand-built ledgers: exact numbers."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from usage_db import fill, usage_row

from comptroller.analytics import (
    DuckDBReader,
    budget_state,
    builtin_panels,
    connect,
    forecast,
    open_reader,
)

# Saturday 21 November, half past noon: 12.5 hours of the day gone, 9 days of November left.
NOW = dt.datetime(2026, 11, 21, 12, 30, tzinfo=dt.UTC)


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


def history(**key: str) -> list[dict[str, object]]:
    """Seven days (14th to 20th) each spending 0.01 at 09h, 0.02 at 12h and 0.03 at 15h."""
    return [
        usage_row(at(day, hour, 5), cost=cost, **key)  # type: ignore[arg-type]
        for day in range(14, 21)
        for hour, cost in ((9, "0.01"), (12, "0.02"), (15, "0.03"))
    ]


@pytest.fixture
def ledger(db_path: Path) -> Path:
    rows = [
        *history(),
        usage_row(at(10, 8), cost="0.5"),  # this month, before the baseline window
        usage_row(at(21, 10), cost="0.05", cap="0.08"),
        usage_row(at(21, 12, 10), cost="0.01", cap="0.08"),
        usage_row(at(21, 14), cost="9"),  # after NOW: not seen by a forecast made at NOW
        usage_row(at(21, 11), tenant="beta", purpose="extract", cost="0.02"),
    ]
    return fill(db_path, rows)


def test_day_end_is_spend_so_far_plus_the_hour_of_day_profile_of_the_rest_of_the_day(
    ledger: Path,
) -> None:
    reader = open_reader(db=ledger)
    try:
        acme, beta = forecast(reader, now=NOW)
    finally:
        reader.close()
    assert acme.key == ("acme", "ctx", "chat")
    assert acme.spent_usd == Decimal("0.06")  # the 14h row is after NOW
    # Rest of the day on a baseline day: half of the 12h hour (0.01) and 15h (0.03).
    assert acme.day_end_usd == Decimal("0.1")
    assert acme.burn_usd == Decimal("0.1152")  # 0.06 x 24 / 12.5, the budget state's projection
    assert acme.cap_usd == Decimal("0.08")
    assert acme.day_end_utilisation == pytest.approx(1.25)
    assert acme.over_cap
    assert acme.month_to_date_usd == Decimal("0.98")  # 0.5 + 7 x 0.06 + 0.06
    assert acme.daily_avg_usd == Decimal("0.06")
    assert acme.days_left == 9
    assert acme.month_end_usd == Decimal("1.56")  # 0.92 before today + 0.1 + 9 x 0.06
    assert (acme.history_days, acme.method) == (7, "hour_of_day")
    # A key without history: its baseline is 7 days of nothing.
    assert beta.key == ("beta", "ctx", "extract")
    assert (beta.day_end_usd, beta.month_end_usd, beta.cap_usd) == (
        Decimal("0.02"),
        Decimal("0.02"),
        None,
    )
    assert not beta.over_cap


def test_per_purpose_sums_the_keys_of_each_purpose(db_path: Path) -> None:
    fill(db_path, [*history(), *history(tenant="beta"), usage_row(at(21, 10), cost="0.05")])
    reader = open_reader(db=db_path)
    try:
        [chat] = forecast(reader, now=NOW, by="purpose")
        [only_beta] = forecast(reader, now=NOW, by="purpose", tenant="beta")
    finally:
        reader.close()
    assert (chat.tenant, chat.context, chat.purpose) == ("*", "*", "chat")
    assert chat.spent_usd == Decimal("0.05")
    assert chat.day_end_usd == Decimal("0.13")  # 0.05 + 2 keys x 0.04
    assert chat.daily_avg_usd == Decimal("0.12")
    assert chat.cap_usd is None
    assert only_beta.day_end_usd == Decimal("0.04")


def test_without_history_the_burn_rate_stands_in(db_path: Path) -> None:
    fill(db_path, [usage_row(at(21, 3), cost="0.25", cap="1")])
    reader = open_reader(db=db_path)
    try:
        [only] = forecast(reader, now=NOW)
        [state] = budget_state(reader, now=NOW)
    finally:
        reader.close()
    # The budget state says the same of today: its projection is the burn rate.
    assert (state.spent_usd, state.cap_usd) == (only.spent_usd, only.cap_usd)
    assert state.projected_usd == pytest.approx(float(only.burn_usd))
    assert only.method == "burn_rate"
    assert only.history_days == 0
    assert only.day_end_usd == only.burn_usd == Decimal("0.48")  # 0.25 x 24 / 12.5
    assert only.month_end_usd == Decimal("4.8")  # + 9 days at today's projection


def test_an_empty_ledger_has_no_forecast(con: duckdb.DuckDBPyConnection) -> None:
    assert forecast(DuckDBReader(con), now=NOW) == []


def literal_sql(sql: str, bound: dict[str, object]) -> str:
    """The panel's SQL with its parameters written in, as a user pastes it into `sql`."""
    for name in sorted(bound, key=len, reverse=True):
        value = bound[name]
        if value is None:
            text = "NULL"
        elif isinstance(value, str):
            text = "'" + value.replace("'", "''") + "'"
        elif isinstance(value, dt.datetime):
            text = f"TIMESTAMPTZ '{value.isoformat()}'"
        elif isinstance(value, dt.date):
            text = f"DATE '{value.isoformat()}'"
        else:
            text = repr(value)
        sql = sql.replace(f"${name}", text)
    return sql


def test_comptroller_sql_with_the_panel_gives_the_same_numbers(
    ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from comptroller.cli import main

    panel = builtin_panels()["forecast"]
    query = literal_sql(panel.sql, panel.bind({}, now=NOW))
    main(["sql", "--db", str(ledger), "-f", "json", query])
    rows = json.loads(capsys.readouterr().out)
    reader = open_reader(db=ledger)
    try:
        expected = forecast(reader, now=NOW)
    finally:
        reader.close()
    assert [(r["tenant"], Decimal(str(r["day_end_usd"]))) for r in rows] == [
        (f.tenant, f.day_end_usd) for f in expected
    ]
    assert [Decimal(str(r["month_end_usd"])) for r in rows] == [f.month_end_usd for f in expected]


def test_the_hourly_rollup_kept_by_landing_gives_what_a_rebuild_gives(ledger: Path) -> None:
    from comptroller.analytics import rebuild_rollup

    reader = open_reader(db=ledger)
    try:
        landed = forecast(reader, now=NOW)
    finally:
        reader.close()
    con = connect(ledger)
    try:
        rebuild_rollup(con, timezone="UTC")
        assert forecast(DuckDBReader(con), now=NOW) == landed
    finally:
        con.close()


def test_budget_forecast_prints_the_panel_s_numbers(
    ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from comptroller.cli import main

    at_now = ("--db", str(ledger), "--now", "2026-11-21T12:30:00")
    main(["budget", "forecast", *at_now])
    out = capsys.readouterr().out
    [acme] = [line for line in out.splitlines() if line.startswith("acme")]
    assert acme.split() == [
        *("acme", "ctx", "chat", "$0.0600", "$0.1000", "$0.1152", "$0.08", "OVER"),
        *("$0.98", "$1.56"),
    ]
    assert "hour-of-day profile of the last 7 days" in out
    assert "+ 9 days at the daily average" in out
    main(["budget", "forecast", *at_now, "--by", "purpose", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["purpose"], r["day_end_usd"]) for r in rows] == [
        ("chat", "0.1000000000"),
        ("extract", "0.0200000000"),
    ]


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger the demo made: 600 calls over 4 simulated days and today so far."""
    import os
    import subprocess
    import sys

    data_dir = tmp_path_factory.mktemp("demo")
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("COMPTROLLER_") or k.startswith("OTEL_"))
        or k.startswith("COMPTROLLER_TEST_")
    }
    env["COMPTROLLER_DATA_DIR"] = str(data_dir)
    subprocess.run(
        [sys.executable, "-m", "comptroller", "demo", "--no-tui", "--calls", "600", "--days", "4"],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
        cwd=data_dir,
    )
    return data_dir / "comptroller.duckdb"


def test_on_a_demo_ledger_the_forecast_adds_up_to_the_raw_usage(demo_db: Path) -> None:
    now = dt.datetime.now(dt.UTC)  # the demo's calls end now; its budget day is UTC
    reader = open_reader(db=demo_db)
    try:
        keys = forecast(reader, now=now)
        purposes = forecast(reader, now=now, by="purpose")
    finally:
        reader.close()
    con = duckdb.connect(str(demo_db), read_only=True)
    try:
        today_start = dt.datetime.combine(now.date(), dt.time(), tzinfo=dt.UTC)
        raw = dict(
            con.execute(
                "SELECT purpose, sum(cost_usd) FROM llm_usage WHERE ts >= ? GROUP BY 1",
                [today_start],
            ).fetchall()
        )
        month = dict(
            con.execute(
                "SELECT purpose, sum(cost_usd) FROM llm_usage WHERE ts >= ? GROUP BY 1",
                [today_start.replace(day=1)],
            ).fetchall()
        )
        capped = set(
            con.execute(
                "SELECT tenant, context, purpose FROM llm_budget_daily "
                "WHERE day = ? AND budget_cap_usd IS NOT NULL",
                [now.date()],
            ).fetchall()
        )
    finally:
        con.close()
    assert {p.purpose for p in purposes} == set(month)
    for p in purposes:
        assert p.spent_usd == raw.get(p.purpose, 0), p.purpose
        assert p.month_to_date_usd == month[p.purpose], p.purpose
        assert p.day_end_usd >= p.spent_usd
        assert p.month_end_usd >= p.month_to_date_usd
        assert p.history_days == 4  # the demo's whole days before today
        # A purpose's forecast is the sum of its keys' (to the ledger's precision).
        of_keys = [k for k in keys if k.purpose == p.purpose]
        assert abs(sum(k.day_end_usd for k in of_keys) - p.day_end_usd) < Decimal("1e-8")
        assert abs(sum(k.month_end_usd for k in of_keys) - p.month_end_usd) < Decimal("1e-8")
    # The demo's budgets: each key's cap is the one its calls of today carried (just after
    # midnight UTC no budgeted key may have called yet today).
    assert {(k.tenant, k.context, k.purpose) for k in keys if k.cap_usd is not None} == capped
