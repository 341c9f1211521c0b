"""The FOCUS export: the ledger's spend in the FinOps column set, totals equal to the ledger's."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from usage_db import fill, usage_row

from comptroller.analytics import DuckDBReader, connect, focus_table, write_focus
from comptroller.cli import main
from comptroller.errors import UsageError

ZONE = "Europe/Paris"
DAY = dt.date(2026, 11, 20)
# 23:30 UTC on the 19th is the 20th in Paris: the local day decides the charge period.
EARLY = dt.datetime(2026, 11, 19, 23, 30, tzinfo=dt.UTC)
NOON = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
NEXT = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.UTC)

REQUIRED = {
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency",
    "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeDescription", "ServiceName", "ServiceCategory", "ProviderName",
    "PublisherName", "InvoiceIssuerName", "SkuId", "ConsumedQuantity", "ConsumedUnit",
    "PricingUnit", "PricingQuantity", "RegionId", "ResourceId", "Tags",
}  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    rows: list[dict[str, Any]] = [
        usage_row(EARLY, purpose="scoring", model="gpt-4o", cost="0.5"),
        usage_row(NOON, purpose="scoring", model="gpt-4o", cost="0.25"),
        usage_row(NOON, purpose="scoring", model="gpt-4o", cost=None),
        usage_row(NOON, purpose="chat", provider="anthropic", model="claude-sonnet-4-5",
                  cost="1.125", tenant="beta", org=None),
        usage_row(NEXT, purpose="chat", model="gpt-4o-mini", cost="0.0003"),
    ]  # fmt: skip
    return fill(tmp_path / "u.duckdb", rows, timezone=ZONE)


def table(db: Path, **kw: Any) -> Any:
    con = connect(db, read_only=True)
    try:
        return focus_table(DuckDBReader(con), timezone=ZONE, **kw)
    finally:
        con.close()


def ledger_sum(db: Path, since: dt.datetime | None = None, until: dt.datetime | None = None) -> Any:
    con = connect(db, read_only=True)
    try:
        ((total,),) = con.execute(
            "SELECT sum(cost_usd) FROM llm_usage WHERE ($1 IS NULL OR ts >= $1::TIMESTAMPTZ) "
            "AND ($2 IS NULL OR ts < $2::TIMESTAMPTZ)",
            [
                None if since is None else since.isoformat(),
                None if until is None else until.isoformat(),
            ],
        ).fetchall()
    finally:
        con.close()
    return total


def test_sum_of_billed_cost_equals_the_ledger_over_the_same_window(db: Path) -> None:
    everything = table(db)
    assert set(everything.column_names) >= REQUIRED
    billed = [c for c in everything.column("BilledCost").to_pylist() if c is not None]
    assert sum(billed) == ledger_sum(db) == Decimal("1.8753")
    one_day = table(db, since=DAY, until=DAY)
    paris = dt.timezone(dt.timedelta(hours=1))  # CET in November
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=paris)
    billed = [c for c in one_day.column("BilledCost").to_pylist() if c is not None]
    assert sum(billed) == ledger_sum(db, start, start + dt.timedelta(days=1))
    assert sum(one_day.column("x_Calls").to_pylist()) == 4


def test_charge_periods_are_local_days_in_utc_or_utc_hours(db: Path) -> None:
    rows = table(db, since=DAY, until=DAY).to_pylist()
    starts = {r["ChargePeriodStart"].isoformat() for r in rows}
    ends = {r["ChargePeriodEnd"].isoformat() for r in rows}
    assert starts == {"2026-11-19T23:00:00+00:00"}  # Paris midnight, in UTC
    assert ends == {"2026-11-20T23:00:00+00:00"}
    assert {r["BillingPeriodStart"].isoformat() for r in rows} == {"2026-10-31T23:00:00+00:00"}
    hourly = table(db, granularity="hour").to_pylist()
    assert {(r["ChargePeriodStart"].isoformat(), r["ChargePeriodEnd"].isoformat())
            for r in hourly if r["x_Model"] == "gpt-4o-mini"} == {
        ("2026-11-21T09:00:00+00:00", "2026-11-21T10:00:00+00:00")
    }  # fmt: skip


def test_an_unpriced_call_has_null_cost_and_is_flagged_never_zero(db: Path) -> None:
    rows = table(db, since=DAY, until=DAY).to_pylist()
    scoring = [r for r in rows if r["x_Purpose"] == "scoring"]
    unpriced = [r for r in scoring if r["x_Unpriced"]]
    assert len(unpriced) == 1
    (row,) = unpriced
    assert row["BilledCost"] is None
    assert row["EffectiveCost"] is None
    assert row["x_Calls"] == 1
    assert "unpriced" in row["ChargeDescription"]
    (priced,) = [r for r in scoring if not r["x_Unpriced"]]
    assert priced["BilledCost"] == Decimal("0.75")
    assert priced["x_Calls"] == 2


def test_the_focus_columns_say_what_was_used(db: Path) -> None:
    rows = table(db, since=DAY, until=DAY).to_pylist()
    (chat,) = [r for r in rows if r["x_Purpose"] == "chat"]
    assert chat["ServiceCategory"] == "AI and Machine Learning"
    assert chat["ChargeCategory"] == "Usage"
    assert chat["BillingCurrency"] == "USD"
    assert chat["ProviderName"] == chat["PublisherName"] == chat["InvoiceIssuerName"]
    assert chat["ProviderName"] == "Anthropic"
    assert chat["SkuId"] == "anthropic:claude-sonnet-4-5"
    assert chat["ConsumedQuantity"] == 120
    assert chat["ConsumedUnit"] == "Tokens"
    assert chat["RegionId"] is None
    assert json.loads(chat["Tags"]) == {
        "tenant": "beta", "org": "", "context": "ctx", "purpose": "chat"
    }  # fmt: skip
    assert chat["SubAccountId"] == "beta"
    assert chat["BillingAccountId"] is None


def test_parquet_and_csv_round_trip_and_other_extensions_are_refused(
    db: Path, tmp_path: Path
) -> None:
    focus = table(db)
    write_focus(focus, tmp_path / "spend.parquet")
    back = pq.read_table(tmp_path / "spend.parquet")
    assert back.column_names == focus.column_names
    assert back.column("BilledCost").to_pylist() == focus.column("BilledCost").to_pylist()
    write_focus(focus, tmp_path / "spend.csv")
    with (tmp_path / "spend.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == focus.num_rows
    assert rows[0]["ChargePeriodStart"] == "2026-11-19T23:00:00Z"  # Paris midnight of the 20th
    assert sum(Decimal(r["BilledCost"]) for r in rows if r["BilledCost"]) == ledger_sum(db)
    assert [r["BilledCost"] for r in rows if r["x_Unpriced"] == "True"] == [""]
    with pytest.raises(UsageError, match=r"\.parquet or \.csv"):
        write_focus(focus, tmp_path / "spend.xlsx")


def test_cli_export_writes_the_file(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "spend.parquet"
    code = 0
    try:
        main(["export", "--focus", "--db", str(db), "-o", str(out), "--since", "2026-11-20"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 0, capsys.readouterr().err
    written = pq.read_table(out)
    assert "FOCUS rows" in capsys.readouterr().err
    # UTC here (no configuration): the 23:30 UTC call of the 19th is out of range.
    billed = [c for c in written.column("BilledCost").to_pylist() if c is not None]
    start = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    assert sum(billed) == ledger_sum(db, start)
