"""Views, keys, filters, drill-down, sorting, find, copy and export — driven by Pilot."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from textual.widgets import Input

from comptroller.tui import VIEW_IDS, ComptrollerApp, DuckDBSource, Filters
from comptroller.tui._format import money
from comptroller.tui._screens import FilterScreen, KeysScreen, TraceScreen
from comptroller.tui._widgets import DataGrid, NavBar, Stat

from . import _dataset
from .conftest import make_app, settle

SIZE = (120, 40)


def _sql(db: Path, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    # The same figures straight from the file, without the dashboard or the panels.
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [
            tuple(row.values()) for row in con.sql(sql, params=params).to_arrow_table().to_pylist()
        ]
    finally:
        con.close()


def _grid(app: ComptrollerApp, grid_id: str) -> DataGrid:
    return app.query_one(f"#{grid_id}", DataGrid)


async def test_number_keys_reach_every_view_and_each_shows_rows(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for n, view_id in enumerate(VIEW_IDS, start=1):
            await pilot.press(str(n))
            await settle(pilot)
            assert app.current == view_id
            assert app.query_one("#views").current == f"view-{view_id}"  # type: ignore[attr-defined]
            grids = app.view(view_id).grids()
            assert grids, view_id
            assert any(grid.rows for grid in grids), view_id
            assert not app.errors, app.errors
        nav = app.query_one("#nav", NavBar)
        assert "6 Calls" in str(nav.render())


async def test_overview_figures_equal_sql_over_the_database(
    source: DuckDBSource, usage_db: Path
) -> None:
    app = make_app(source)
    day_start = _dataset.NOW.replace(hour=0, minute=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        [(today,)] = _sql(
            usage_db, "SELECT sum(cost_usd)::DOUBLE FROM llm_usage WHERE ts >= ?", [day_start]
        )
        [(month,)] = _sql(
            usage_db,
            "SELECT sum(cost_usd)::DOUBLE FROM llm_usage WHERE ts >= ?",
            [day_start.replace(day=1)],
        )
        assert app.query_one("#stat-today", Stat).value.startswith(money(today))
        assert app.query_one("#stat-month", Stat).value == money(month)
        expected = _sql(
            usage_db,
            "SELECT purpose, sum(cost_usd)::DOUBLE FROM llm_usage WHERE ts >= ? GROUP BY 1 ORDER BY 2 DESC",
            [day_start],
        )
        shown = [(row["purpose"], row["cost_usd"]) for row in _grid(app, "tile-top-purposes").shown]
        assert [p for p, _ in shown] == [p for p, _ in expected]
        assert [pytest.approx(float(c)) for _, c in shown] == [c for _, c in expected]


async def test_filter_screen_applies_tenant_to_every_view(
    source: DuckDBSource, usage_db: Path
) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f")
        await pilot.pause()
        assert isinstance(app.screen, FilterScreen)
        app.screen.query_one("#filter-tenant", Input).value = "globex"
        await pilot.press("enter")
        await settle(pilot)
        assert app.filters == Filters(tenant="globex")
        assert {row["tenant"] for row in _grid(app, "tile-top-tenants").rows} == {"globex"}
        await pilot.press("6")
        await settle(pilot)
        calls = _grid(app, "calls-tail").rows
        assert calls
        assert {row["tenant"] for row in calls} == {"globex"}
        await pilot.press("2")
        await settle(pilot)
        expected = _sql(
            usage_db,
            "SELECT purpose, sum(cost_usd) FROM llm_usage WHERE ts >= ? AND tenant = 'globex' "
            "GROUP BY 1 ORDER BY 2 DESC",
            [_dataset.NOW.replace(hour=0, minute=0)],
        )
        # Exact: the panels pass DECIMAL amounts through; only the view rounds, to write them.
        shown = [(row["purpose"], row["cost_usd"]) for row in _grid(app, "spend-purposes").rows]
        assert shown == expected


async def test_range_key_widens_spend_to_seven_days(source: DuckDBSource, usage_db: Path) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        today_total = sum(row["cost_usd"] for row in _grid(app, "spend-purposes").rows)
        await pilot.press("t")
        await settle(pilot)
        assert app.filters.range == "7d"
        since = _dataset.NOW.replace(hour=0, minute=0) - timedelta(days=6)
        [(week,)] = _sql(usage_db, "SELECT sum(cost_usd) FROM llm_usage WHERE ts >= ?", [since])
        week_shown = sum(row["cost_usd"] for row in _grid(app, "spend-purposes").rows)
        assert week_shown == week
        assert week_shown > today_total
        trends = [row["trend"].plain for row in _grid(app, "spend-purposes").rows]
        assert all(len(t) == 7 for t in trends)


async def test_enter_drills_from_purpose_to_tenants_and_models_and_escape_returns(
    source: DuckDBSource, usage_db: Path
) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot)
        purposes = _grid(app, "spend-purposes")
        assert purposes.current_row() is not None
        first = purposes.current_row()["purpose"]  # type: ignore[index]
        await pilot.press("enter")
        await settle(pilot)
        view = app.view("spend")
        assert view.drill == first  # type: ignore[attr-defined]
        assert not purposes.display
        assert _grid(app, "spend-tenants").display
        day_start = _dataset.NOW.replace(hour=0, minute=0)
        expected = _sql(
            usage_db,
            "SELECT tenant, context, sum(cost_usd) FROM llm_usage WHERE ts >= ? AND purpose = ? "
            "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
            [day_start, first],
        )
        shown = [
            (r["tenant"], r["context"], r["cost_usd"]) for r in _grid(app, "spend-tenants").rows
        ]
        assert shown == expected
        models = {(r["provider"], r["model"]) for r in _grid(app, "spend-models").rows}
        expected_models = set(
            _sql(
                usage_db,
                "SELECT DISTINCT provider, response_model FROM llm_usage WHERE ts >= ? AND purpose = ?",
                [day_start, first],
            )
        )
        assert models == expected_models
        await pilot.press("escape")
        await settle(pilot)
        assert view.drill is None  # type: ignore[attr-defined]
        assert purposes.display
        assert not _grid(app, "spend-tenants").display


async def test_sort_key_orders_by_cursor_column_and_again_reverses(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        grid = _grid(app, "calls-tail")
        await pilot.press("right")  # Tenant
        await pilot.press("s")
        tenants = [row["tenant"] for row in grid.shown]
        assert tenants == sorted(tenants)
        await pilot.press("s")
        assert [row["tenant"] for row in grid.shown] == sorted(tenants, reverse=True)
        assert "by Tenant ↓" in str(grid.query_one(".grid-title").render())


async def test_slash_finds_rows_and_escape_clears(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        grid = _grid(app, "calls-tail")
        total = len(grid.shown)
        await pilot.press("slash")
        app.query_one("#table-filter", Input).value = "claude"
        await pilot.pause()
        assert [row["model"] for row in grid.shown] == ["claude-sonnet-4"]
        await pilot.press("enter")
        assert grid.filter_text == "claude"
        assert app.focused is grid.table
        await pilot.press("slash", "escape")
        assert grid.filter_text == ""
        assert len(grid.shown) == total


async def test_copy_keys_copy_the_cell_and_the_trace_id(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        await pilot.press("right", "c")
        assert app.clipboard == "acme-eu"
        await pilot.press("y")
        assert (
            app.clipboard
            == _dataset.usage_row(
                1,
                _dataset.NOW,
                tenant="acme-eu",
                context="platform",
                purpose="reasoning",
                cost=None,
            )[2]
        )


async def test_export_writes_the_rows_shown_as_csv_parquet_and_json(
    source: DuckDBSource, tmp_path: Path
) -> None:
    app = make_app(source, tmp_path=tmp_path / "out")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot)
        shown = _grid(app, "budget-state").shown
        for fmt, ext in (("csv", "csv"), ("parquet", "parquet"), ("json", "jsonl")):
            await pilot.press("e")
            await pilot.pause()
            await pilot.press(fmt[0])
            state = tmp_path / "out" / f"comptroller-budgets-budget-state-20260314T150000.{ext}"
            assert (
                tmp_path / "out" / f"comptroller-budgets-budget-events-20260314T150000.{ext}"
            ).exists()
            if fmt == "parquet":
                rows = pq.read_table(state).to_pylist()
            elif fmt == "json":
                rows = [json.loads(line) for line in state.read_text().splitlines()]
            else:
                header, *lines = state.read_text().splitlines()
                rows = [
                    dict(zip(header.replace('"', "").split(","), line.split(","), strict=False))
                    for line in lines
                ]
            assert [row["tenant"].strip('"') for row in rows] == [row["tenant"] for row in shown]
            assert len(rows) == 2


async def test_enter_on_a_call_opens_its_trace_spans_and_escape_returns(
    source: DuckDBSource,
) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        grid = _grid(app, "calls-tail")
        index = next(i for i, row in enumerate(grid.shown) if row["trace_id"] == "t900001")
        for _ in range(index):
            await pilot.press("down")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, TraceScreen)
        while not screen.loaded:
            await pilot.pause(0.01)
        spans = screen.query_one(DataGrid).rows
        assert [row["tree"] for row in spans] == [
            "comptroller.call reasoning",
            "  chat gpt-4o",
            "  chat claude-sonnet-4",
        ]
        assert [row["fallback_depth"] for row in spans] == [None, 0, 1]
        await pilot.press("escape")
        assert not isinstance(app.screen, TraceScreen)
        assert app.current == "calls"


async def test_question_mark_lists_the_keys_and_palette_offers_the_actions(
    source: DuckDBSource,
) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, KeysScreen)
        described = {what for _, what in app.screen.rows}
        assert {
            "Filters",
            "Range",
            "Export",
            "Refresh",
            "Pause",
            "Back",
            "Sort",
            "Copy",
        } <= described
        await pilot.press("escape")
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {
            "Go to Calls",
            "Export as parquet",
            "Range: 30d",
            "Pause / resume refresh",
        } <= titles


async def test_keys_are_configuration(usage_db: Path) -> None:
    from comptroller.tui import AppOptions

    src = DuckDBSource.open(usage_db)
    app = ComptrollerApp(
        src,
        options=AppOptions(keys={"view.calls": "x"}),
        clock=lambda: _dataset.NOW,
        interval_refresh=False,
    )
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("x")
            await settle(pilot)
            assert app.current == "calls"
    finally:
        src.close()


async def test_theme_key_switches_dark_and_light(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.theme == "textual-dark"
        await pilot.press("T")
        assert app.theme == "textual-light"
