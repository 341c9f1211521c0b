"""A money column of a dashboard table is written at one precision, whatever is shown of it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from textual.app import App, ComposeResult
from textual.coordinate import Coordinate

from comptroller.tui._widgets import Column, Context, DataGrid

CTX = Context(now=datetime(2026, 3, 14, 15, 0, tzinfo=UTC), tz="UTC")
ROWS: list[dict[str, object]] = [
    {"who": "big", "cost_usd": Decimal("12.5")},
    {"who": "small", "cost_usd": Decimal("0.004")},
    {"who": "unpriced", "cost_usd": None},
    {"who": "float", "cost_usd": 0.25},
]


class _Grid(App[None]):
    def compose(self) -> ComposeResult:
        yield DataGrid(
            "t",
            [Column(key="who", label="Who"), Column(key="cost_usd", label="Cost", kind="money")],
            id="g",
        )


def _costs(grid: DataGrid) -> list[str]:
    return [grid.table.get_cell_at(Coordinate(n, 1)).plain for n in range(grid.table.row_count)]


async def test_the_smallest_amount_sets_the_precision_of_its_column() -> None:
    app = _Grid()
    async with app.run_test() as pilot:
        grid = app.query_one(DataGrid)
        grid.set_rows(ROWS, truncated=False, context=CTX)
        await pilot.pause()
        # Each alone would be $12.50, $0.004 and $0.25: read together, the figures line up.
        assert _costs(grid) == ["$12.500", "$0.004", "—", "$0.250"]


async def test_filter_and_sort_keep_the_precision_of_all_the_rows() -> None:
    app = _Grid()
    async with app.run_test() as pilot:
        grid = app.query_one(DataGrid)
        grid.set_rows(ROWS, truncated=False, context=CTX)
        grid.set_filter("big")  # the small amount is no longer shown
        await pilot.pause()
        assert _costs(grid) == ["$12.500"]
        grid.set_filter("12.500")  # the filter finds what is written
        grid.sort_by("cost_usd")
        await pilot.pause()
        assert _costs(grid) == ["$12.500"]
        grid.set_filter("")
        await pilot.pause()
        assert _costs(grid) == ["$0.004", "$0.250", "$12.500", "—"]
