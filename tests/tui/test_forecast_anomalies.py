"""The Budgets view shows where each key's spend is heading (the `forecast` panel) and flags
the keys spending far above their own baseline this hour (the `anomalies` panel)."""

from __future__ import annotations

from pathlib import Path

from usage_db import insert_usage, usage_row

from comptroller.analytics import apply_usage_batch, connect
from comptroller.tui import DuckDBSource
from comptroller.tui._widgets import DataGrid

from . import _dataset
from .conftest import make_app, settle


def _cells(grid: DataGrid, index: int) -> dict[str, str]:
    return {
        column.key: cell.plain
        for column, cell in zip(grid.columns, grid.table.get_row_at(index), strict=True)
    }


async def test_a_spike_is_flagged_and_its_key_projected_over_its_cap(usage_db: Path) -> None:
    # $3 this hour (it has just begun: "now" is 15:00 sharp) on a key with a $2 cap whose
    # baseline at 15h is well under a dollar.
    con = connect(usage_db)
    try:
        spike = [
            usage_row(
                _dataset.NOW,
                tenant="acme-eu",
                context="platform",
                purpose="reasoning",
                cost="1.5",
                cap="2",
            )
            for _ in range(2)
        ]
        apply_usage_batch(con, insert_usage(con, spike), timezone="UTC")
    finally:
        con.close()
    source = DuckDBSource.open(usage_db)
    try:
        app = make_app(source)
        async with app.run_test(size=(160, 60)) as pilot:
            await pilot.press("3")
            await settle(pilot)
            anomalies = app.query_one("#budget-anomalies", DataGrid)
            assert anomalies.display
            [flagged] = [i for i, row in enumerate(anomalies.shown) if row["tenant"] == "acme-eu"]
            cells = _cells(anomalies, flagged)
            assert (cells["context"], cells["purpose"], cells["flag"]) == (
                "platform",
                "reasoning",
                "ANOMALY",
            )
            assert cells["calls"] == "2"
            forecast = app.query_one("#budget-forecast", DataGrid)
            index = next(
                i
                for i, row in enumerate(forecast.shown)
                if (row["tenant"], row["context"], row["purpose"])
                == ("acme-eu", "platform", "reasoning")
            )
            cells = _cells(forecast, index)
            assert cells["cap_usd"] == "$2.00"
            assert cells["over"] == "over cap"
            # Keys without a cap are projected too, never marked.
            assert all(
                _cells(forecast, i)["over"] == ""
                for i, row in enumerate(forecast.shown)
                if row["cap_usd"] is None
            )
    finally:
        source.close()


async def test_without_anomalies_their_grid_is_hidden(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=(160, 60)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        grid = app.query_one("#budget-anomalies", DataGrid)
        assert (grid.shown, grid.display) == ([], False)
        assert len(app.query_one("#budget-forecast", DataGrid).shown) == 18
