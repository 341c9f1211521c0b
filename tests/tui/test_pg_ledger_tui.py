"""The dashboard on a PostgreSQL ledger: every view shows the rows it shows over a DuckDB
ledger filled with the same batches (the real landers; the real local PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from analytics._pg_ledger import fill, ledger_url, pg_schema

from comptroller.analytics import PgReader
from comptroller.tui import VIEW_IDS, AppOptions, ComptrollerApp, DuckDBSource

from .conftest import settle

pytestmark = pytest.mark.postgres

SIZE = (120, 40)


@pytest.fixture
def ledgers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with pg_schema(postgres_url) as schema:
        duck = tmp_path / "ledger.duckdb"
        fill(postgres_url, schema, duck)
        yield ledger_url(postgres_url, schema), duck


async def _views(source: DuckDBSource, now: dt.datetime, tmp_path: Path) -> dict[str, Any]:
    """Each view's grids, as the rows they hold (money as shown), once loaded."""
    options = AppOptions(
        refresh_s=60.0, max_rows=500, timezone="UTC", theme="textual-dark", export_dir=tmp_path
    )
    app = ComptrollerApp(source, options=options, clock=lambda: now, interval_refresh=False)
    seen: dict[str, Any] = {}
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for n, view_id in enumerate(VIEW_IDS, start=1):
            await pilot.press(str(n))
            await settle(pilot)
            assert not app.errors, app.errors
            seen[view_id] = {
                grid.id: sorted(repr(sorted(row.items())) for row in grid.rows)
                for grid in app.view(view_id).grids()
            }
    return seen


async def test_every_view_shows_the_rows_of_the_duckdb_ledger(
    ledgers: tuple[str, Path], tmp_path: Path
) -> None:
    url, duck = ledgers
    now = dt.datetime.now(dt.UTC)
    pg = DuckDBSource.open_pg(url)
    try:
        ours = await _views(pg, now, tmp_path)
        assert isinstance(pg.reader, PgReader)
    finally:
        pg.close()
    local = DuckDBSource.open(duck)
    try:
        theirs = await _views(local, now, tmp_path)
    finally:
        local.close()
    assert any(rows for grids in ours.values() for rows in grids.values())
    assert any(ours["spend"].values())
    for view_id in VIEW_IDS:
        for grid, rows in theirs[view_id].items():
            if grid in ("budget-events", "alerts-warnings"):
                # Budget events are stamped with each lander's own instant of landing.
                assert len(ours[view_id][grid]) == len(rows), (view_id, grid)
            else:
                assert ours[view_id][grid] == rows, (view_id, grid)
