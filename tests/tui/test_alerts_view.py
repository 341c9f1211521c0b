"""The Alerts view: today's budget warnings saying what they crossed, and what became of the
alerts sent to webhooks, on a ledger made through the real path (tests/alerts_ledger.py)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from alerts_ledger import SECRET_PATH, Ledger, Receiver, build_ledger

from comptroller.tui import AppOptions, ComptrollerApp, DuckDBSource
from comptroller.tui._views_ops import warning_text
from comptroller.tui._widgets import DataGrid

from .conftest import settle


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def ledger(tmp_path: Path, receiver: Receiver) -> Ledger:
    return build_ledger(tmp_path / "data", receiver)


def cells(grid: DataGrid) -> list[dict[str, str]]:
    """Each row of `grid` as shown on screen, by column key."""
    return [
        {
            column.key: cell.plain
            for column, cell in zip(grid.columns, grid.table.get_row_at(index), strict=True)
        }
        for index in range(grid.table.row_count)
    ]


async def test_alerts_view_shows_todays_warnings_and_each_webhooks_deliveries(
    ledger: Ledger, tmp_path: Path
) -> None:
    source = DuckDBSource.open(ledger.db)
    try:
        # The real clock: the alerts were raised and delivered just now.
        app = ComptrollerApp(
            source,
            options=AppOptions(timezone="UTC", export_dir=tmp_path),
            interval_refresh=False,
        )
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot)
            await pilot.press("7")
            await settle(pilot)
            assert app.current == "alerts"

            warnings = cells(app.query_one("#alerts-warnings", DataGrid))
            assert sorted(row["warning"] for row in warnings) == [
                "50 % of $0.10",
                "80 % of $0.10",
                "projected $0.12 by midnight",
            ]
            assert {(r["tenant"], r["context"], r["purpose"]) for r in warnings} == {
                ("acme-eu", "support", "reasoning")
            }
            spent = {row["warning"]: row["spent_usd"] for row in warnings}
            assert spent["80 % of $0.10"] == "$0.09"
            assert spent["projected $0.12 by midnight"] == "$0.06"

            webhooks = {
                row["webhook"]: row for row in cells(app.query_one("#alerts-webhooks", DataGrid))
            }
            assert set(webhooks) == {"ops", "pager"}
            assert (webhooks["ops"]["delivered"], webhooks["ops"]["failed"]) == ("3", "—")
            assert webhooks["ops"]["last_delivered_ts"] != "—"
            assert (webhooks["pager"]["delivered"], webhooks["pager"]["failed"]) == ("0", "3")
            assert webhooks["pager"]["last_error"] == "HTTP 404"
            assert webhooks["pager"]["last_delivered_ts"] == "—"

            failed = cells(app.query_one("#alerts-failed", DataGrid))
            assert len(failed) == 3
            assert {
                (r["alert"], r["subject"], r["webhook"], r["attempts"], r["error"]) for r in failed
            } == {("budget.warning", "acme-eu / support / reasoning", "pager", "1", "HTTP 404")}

            # A webhook is named, never shown by its URL (which holds its secret).
            assert SECRET_PATH not in app.export_screenshot()
    finally:
        source.close()


async def test_the_tenant_filter_applies_to_the_warnings(ledger: Ledger, tmp_path: Path) -> None:
    source = DuckDBSource.open(ledger.db)
    try:
        app = ComptrollerApp(
            source,
            options=AppOptions(timezone="UTC", export_dir=tmp_path),
            interval_refresh=False,
        )
        app.filters = app.filters.with_(tenant="globex")
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot)
            await pilot.press("7")
            await settle(pilot)
            grid = app.query_one("#alerts-warnings", DataGrid)
            assert grid.rows == []
            assert "no budget warned today" in str(grid.query_one(".grid-title").render())
            # Deliveries are per webhook, not per tenant: still shown.
            assert len(app.query_one("#alerts-webhooks", DataGrid).rows) == 2
    finally:
        source.close()


@pytest.mark.parametrize(
    ("row", "shown"),
    [
        ({"warning_kind": "threshold", "threshold": 0.8, "cap_usd": Decimal(1)}, "80 % of $1.00"),
        ({"warning_kind": "threshold", "threshold": 1.0, "cap_usd": Decimal(1)}, "100 % of $1.00"),
        (
            {"warning_kind": "projected", "projected_usd": Decimal("1.2400000000")},
            "projected $1.24 by midnight",
        ),
        # Recorded before warnings said what they crossed: the share spent when raised.
        ({"cap_usd": Decimal(2), "spent_usd": Decimal("1.7")}, "85 % of $2.00"),
        ({}, "warning"),
    ],
)
def test_a_warning_says_what_it_crossed(row: dict[str, object], shown: str) -> None:
    assert warning_text(row).plain == shown
