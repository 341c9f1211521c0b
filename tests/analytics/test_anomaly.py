"""Spend anomalies (`spend_anomalies`, the `anomalies` panel, `record_anomaly_events`) over
hand-built ledgers: which keys are flagged, on what numbers, and recorded once per hour."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from usage_db import fill, usage_row

from comptroller.analytics import (
    Anomaly,
    AnomalyRule,
    DuckDBReader,
    connect,
    open_reader,
    record_anomaly_events,
    spend_anomalies,
)

NOW = dt.datetime(2026, 11, 21, 12, 40, tzinfo=dt.UTC)
# The spend of the 12h hour on the 14th..20th: median 0.02, MAD 0.01.
BASELINE = ("0.01", "0.02", "0.03", "0.02", "0.04", "0.02", "0.03")
THRESHOLD = Decimal("0.079304")  # max(0.02 + 4 x 1.4826 x 0.01, 2 x 0.02)


def at(day: int, hour: int, minute: int = 10) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


def baseline(tenant: str, **extra: object) -> list[dict[str, object]]:
    return [
        usage_row(at(14 + n, 12), tenant=tenant, cost=cost, **extra)  # type: ignore[arg-type]
        for n, cost in enumerate(BASELINE)
    ]


@pytest.fixture
def ledger(db_path: Path) -> Path:
    return fill(
        db_path,
        [
            *baseline("acme"),
            *baseline("beta"),
            usage_row(at(21, 12), tenant="acme", cost="0.05", cap="3"),
            usage_row(at(21, 12, 30), tenant="acme", cost="0.03", cap="3"),  # 0.08 in all
            usage_row(at(21, 12), tenant="beta", cost="0.079"),  # just under the threshold
            usage_row(at(21, 12), tenant="gamma", cost="0.05"),  # never seen at 12h
            usage_row(at(21, 12), tenant="delta", cost="0.005"),  # under min_usd
            usage_row(at(21, 11), tenant="omega", cost="5"),  # an hour ago: not this hour
        ],
    )


def anomalies(db: Path, **kwargs: Any) -> list[Anomaly]:
    reader = open_reader(db=db)
    try:
        return spend_anomalies(reader, **kwargs)
    finally:
        reader.close()


def test_a_key_far_above_its_hour_of_day_baseline_is_flagged_with_the_numbers(
    ledger: Path,
) -> None:
    gamma, acme = anomalies(ledger, now=NOW)
    assert acme.key == ("acme", "ctx", "chat")
    assert acme.hour == dt.datetime(2026, 11, 21, 12)
    assert acme.calls == 2
    assert acme.spent_usd == Decimal("0.08")
    assert acme.median_usd == Decimal("0.02")
    assert acme.mad_usd == Decimal("0.01")
    assert acme.threshold_usd == THRESHOLD
    assert acme.ratio == pytest.approx(4.0)
    assert acme.history_days == 7
    # A key idle at this hour on every baseline day: any spend over min_usd departs from it;
    # it comes first, the furthest over its threshold.
    assert gamma.key == ("gamma", "ctx", "chat")
    assert (gamma.median_usd, gamma.threshold_usd, gamma.ratio) == (0, 0, None)


def test_the_rule_s_thresholds_move_what_is_flagged(ledger: Path) -> None:
    looser = anomalies(ledger, now=NOW, rule=AnomalyRule(k=3.0))
    assert [a.tenant for a in looser] == ["gamma", "acme", "beta"]
    floor = anomalies(ledger, now=NOW, rule=AnomalyRule(min_usd=0.001))
    assert "delta" in [a.tenant for a in floor]
    stricter = anomalies(ledger, now=NOW, rule=AnomalyRule(min_ratio=5.0))
    assert [a.tenant for a in stricter] == ["gamma"]
    assert anomalies(ledger, now=NOW, rule=AnomalyRule(min_days=8)) == []
    assert [a.tenant for a in anomalies(ledger, now=NOW, tenant="acme")] == ["acme"]


def test_too_little_history_flags_nothing(db_path: Path) -> None:
    fill(db_path, [usage_row(at(19, 12), cost="0.01"), usage_row(at(21, 12), cost="1")])
    assert anomalies(db_path, now=NOW) == []  # one baseline day, three needed
    assert len(anomalies(db_path, now=NOW, rule=AnomalyRule(min_days=1))) == 1


def test_anomalies_are_recorded_once_per_key_and_hour(ledger: Path) -> None:
    con = connect(ledger)
    try:
        first = record_anomaly_events(con, now=NOW)
        again = record_anomaly_events(con, now=NOW + dt.timedelta(minutes=5))
        rows = con.execute(
            "SELECT event_id, day, kind, tenant, context, purpose, cap_usd, spent_usd, "
            "attributes FROM budget_events ORDER BY tenant"
        ).fetchall()
        later = usage_row(at(21, 13), tenant="acme", cost="0.5")
    finally:
        con.close()
    assert [a.tenant for a in first] == ["gamma", "acme"]
    assert again == []
    assert [r[3] for r in rows] == ["acme", "gamma"]
    event_id, day, kind, _, context, purpose, cap, spent, attributes = rows[0]
    assert event_id == "budget:2026-11-21T12:anomaly:acme:ctx:chat" == first[1].event_id
    assert (day, kind, context, purpose) == (dt.date(2026, 11, 21), "anomaly", "ctx", "chat")
    assert (cap, spent) == (Decimal("3"), Decimal("0.08"))
    assert json.loads(attributes) == {
        "hour": "2026-11-21T12:00:00",
        "calls": 2,
        "median_usd": "0.0200000000",
        "mad_usd": "0.0100000000",
        "threshold_usd": "0.0793040000",
        "ratio": 4.0,
        "history_days": 7,
    }
    assert rows[1][6] is None  # gamma has no cap
    # The next hour is judged afresh: a new spike there is a new event.
    fill(ledger, [later])
    con = connect(ledger)
    try:
        [next_hour] = record_anomaly_events(con, now=NOW + dt.timedelta(hours=1))
    finally:
        con.close()
    assert next_hour.event_id == "budget:2026-11-21T13:anomaly:acme:ctx:chat"


def test_an_empty_ledger_has_no_anomalies(con: duckdb.DuckDBPyConnection) -> None:
    assert spend_anomalies(DuckDBReader(con), now=NOW) == []
    assert record_anomaly_events(con, now=NOW) == []


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from comptroller.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_budget_check_lists_anomalies_and_exits_4_when_the_budgets_pass(
    ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at_now = ("--db", str(ledger), "--now", "2026-11-21T12:40:00")
    code, out, err = run_cli(capsys, "budget", "check", *at_now, "--anomalies")
    assert code == 4, err
    assert "Spend anomalies this hour (2):" in out
    [acme] = [line for line in out.splitlines() if line.startswith("acme") and "12:00" in line]
    assert acme.split() == [
        *("acme", "ctx", "chat", "2026-11-21", "12:00"),
        *("$0.0800", "$0.0200", "$0.0793", "4.0x", "7"),
    ]
    assert "2 budget keys spending far above their baseline this hour" in err
    assert "gamma/ctx/chat" in err
    code, out, _ = run_cli(capsys, "budget", "check", *at_now, "--anomalies", "--json")
    assert code == 4
    document = json.loads(out)
    assert [a["tenant"] for a in document["anomalies"]] == ["gamma", "acme"]
    assert document["anomalies"][1]["threshold_usd"] == "0.0793040000"
    # Without the flag nothing changes; with a floor above every spend, nothing is found.
    assert run_cli(capsys, "budget", "check", *at_now)[0] == 0
    code, out, _ = run_cli(
        capsys, "budget", "check", *at_now, "--anomalies", "--anomaly-min-usd", "1"
    )
    assert (code, out.splitlines()[-1]) == (0, "no spend anomalies this hour")


def test_a_failing_budget_keeps_its_exit_code_over_anomalies(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_path, [*baseline("acme"), usage_row(at(21, 12), cost="0.5", cap="0.1")])
    code, out, _ = run_cli(
        capsys,
        "budget",
        "check",
        "--db",
        str(db_path),
        "--now",
        "2026-11-21T12:40:00",
        "--anomalies",
    )
    assert code == 1
    assert "Spend anomalies this hour (1):" in out


def test_the_exit_code_of_anomalies_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "budget", "check", "--help")
    assert "4  with --anomalies: spend anomalies this hour" in out


def test_on_a_demo_ledger_the_panel_flags_what_the_rule_says_from_the_raw_usage(
    tmp_path: Path,
) -> None:
    import os
    import statistics
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("COMPTROLLER_") or k.startswith("OTEL_"))
        or k.startswith("COMPTROLLER_TEST_")
    }
    env["COMPTROLLER_DATA_DIR"] = str(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "comptroller", "demo", "--no-tui", "--calls", "600", "--days", "4"],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
        cwd=tmp_path,
    )
    db = tmp_path / "comptroller.duckdb"
    # Yesterday 14:30 UTC (the demo's budget day): its busiest hours, a whole day of history.
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    now = dt.datetime.combine(yesterday, dt.time(14, 30), tzinfo=dt.UTC)
    rule = AnomalyRule(min_usd=0.0, min_days=2, min_ratio=1.5, k=2.0)
    flagged = {a.key: a for a in anomalies(db, now=now, rule=rule)}
    # The rule, recomputed from llm_usage itself rather than the hourly rollup.
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            # Instants as epoch microseconds: DuckDB hands TIMESTAMPTZ over through pytz.
            "SELECT tenant, context, purpose, epoch_us(ts), cost_usd FROM llm_usage "
            "WHERE cost_usd IS NOT NULL AND ts >= ? AND ts < ?",
            [now - dt.timedelta(days=8), now + dt.timedelta(hours=1)],
        ).fetchall()
        ledger_days = {
            d
            for (d,) in con.execute(
                "SELECT DISTINCT (DATE '1970-01-01' + (epoch_us(ts) // 86400000000)::INTEGER) "
                "FROM llm_usage"
            ).fetchall()
        }
    finally:
        con.close()
    days = sorted(d for d in ledger_days if yesterday - dt.timedelta(days=7) <= d < yesterday)
    spend: dict[tuple[str, str, str], dict[dt.date, Decimal]] = {}
    for tenant, context, purpose, micros, cost in rows:
        at_utc = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
        if at_utc.hour == 14:
            per_day = spend.setdefault((tenant, context, purpose), {})
            per_day[at_utc.date()] = per_day.get(at_utc.date(), Decimal(0)) + cost
    expected = set()
    for key, per_day in spend.items():
        now_spend = float(per_day.get(yesterday, 0))
        if yesterday not in per_day:
            continue
        past = [float(per_day.get(d, 0)) for d in days]
        median = statistics.median(past)
        mad = statistics.median(abs(x - median) for x in past)
        threshold = max(median + 2.0 * 1.4826 * mad, 1.5 * median)
        if len(past) >= 2 and now_spend > threshold + 1e-12:
            expected.add(key)
    assert set(flagged) == expected
    assert expected  # the demo's traffic grows day to day: some key departs this loosely
