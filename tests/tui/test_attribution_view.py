"""Spend by attribution in the dashboard: the spend view's grid by end user, feature and tag,
and the `Who` filter (`f`) applied to the views that read the calls themselves."""

from __future__ import annotations

from pathlib import Path

import duckdb
from textual.widgets import Input

from comptroller.tui import DuckDBSource, Filters
from comptroller.tui._screens import FilterScreen
from comptroller.tui._widgets import DataGrid

from . import _dataset
from .conftest import make_app, settle

SIZE = (140, 48)


def _attribute_some_calls(db: Path) -> None:
    """Give today's calls of acme end users, features and tags (the dataset has none)."""
    con = duckdb.connect(str(db))
    try:
        con.execute(
            "UPDATE llm_usage SET user_id = CASE WHEN hash(usage_id) % 3 = 0 THEN 'alice' "
            "ELSE 'bob' END, feature = 'search', tags = MAP {'team': 'growth'} "
            "WHERE tenant = 'acme-eu' AND ts >= ?",
            [_dataset.NOW.replace(hour=0, minute=0)],
        )
    finally:
        con.close()


def _sql(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, [_dataset.NOW.replace(hour=0, minute=0)]).fetchall()
    finally:
        con.close()


async def test_spend_by_user_feature_and_tag_equals_sql_and_who_filters_the_calls(
    usage_db: Path,
) -> None:
    _attribute_some_calls(usage_db)
    expected_users = _sql(
        usage_db,
        "SELECT user_id, sum(cost_usd), count(*) FROM llm_usage WHERE ts >= ? "
        "AND user_id IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
    )
    assert len(expected_users) == 2  # the fixture gives both users calls
    source = DuckDBSource.open(usage_db)
    try:
        app = make_app(source)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            grid = app.query_one("#spend-attribution", DataGrid)
            assert grid.display
            shown = {(r["dimension"], r["value"]): (r["cost_usd"], r["calls"]) for r in grid.rows}
            for user, cost, calls in expected_users:
                assert shown[("user", user)] == (cost, calls)
            total = sum(cost for _, cost, _ in expected_users)  # type: ignore[misc]
            assert shown[("feature", "search")][0] == total
            assert shown[("tag.team", "growth")][0] == total

            await pilot.press("f")
            await pilot.pause()
            assert isinstance(app.screen, FilterScreen)
            who = app.screen.query_one("#filter-attribute", Input)
            who.value = "alice"  # not dimension=value: refused, the screen stays
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, FilterScreen)
            who.value = "user=alice"
            await pilot.press("enter")
            await settle(pilot)
            assert app.filters == Filters(attribute="user=alice")
            grid = app.query_one("#spend-attribution", DataGrid)
            assert {(r["dimension"], r["value"]) for r in grid.rows} == {
                ("user", "alice"),
                ("feature", "search"),
                ("tag.team", "growth"),
            }
            await pilot.press("6")
            await settle(pilot)
            calls = app.query_one("#calls-tail", DataGrid).rows
            assert calls
            assert {row["user_id"] for row in calls} == {"alice"}
            assert "attribute=user=alice" in app.filters.describe()
    finally:
        source.close()


async def test_the_fees_grid_shows_what_sql_says_and_only_when_there_are_fees(
    usage_db: Path,
) -> None:
    source = DuckDBSource.open(usage_db)
    try:
        app = make_app(source)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            assert not app.query_one("#spend-fees", DataGrid).display  # no call reported fees
    finally:
        source.close()
    con = duckdb.connect(str(usage_db))
    try:
        con.execute(
            "UPDATE llm_usage SET fees = '{\"web_searches\": 2}', fee_cost_usd = 0.02 "
            "WHERE purpose = 'reasoning' AND ts >= ?",
            [_dataset.NOW.replace(hour=0, minute=0)],
        )
    finally:
        con.close()
    [(calls, searches, fees)] = _sql(
        usage_db,
        "SELECT count(*), 2 * count(*), sum(fee_cost_usd) FROM llm_usage "
        "WHERE fees IS NOT NULL AND ts >= ?",
    )
    source = DuckDBSource.open(usage_db)
    try:
        app = make_app(source)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            grid = app.query_one("#spend-fees", DataGrid)
            assert grid.display
            assert sum(r["calls"] for r in grid.rows) == calls
            assert sum(r["web_searches"] for r in grid.rows) == searches
            assert sum(r["fees_usd"] for r in grid.rows) == fees
    finally:
        source.close()
