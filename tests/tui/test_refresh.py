"""The refresh machinery: new data within one refresh, skipped ticks, hidden views, staleness,
a database file replaced under the dashboard."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from comptroller.analytics import connect, rebuild_rollup
from comptroller.analytics._source import LocalReader
from comptroller.tui import AppOptions, ComptrollerApp, DuckDBSource, Reader
from comptroller.tui._widgets import DataGrid

from . import _dataset
from .conftest import make_app, settle

SIZE = (120, 40)


async def test_rows_landed_while_running_appear_within_one_refresh(usage_db: Path) -> None:
    # The dashboard reads through the writer's own connection, as beside an embedded sink.
    writer = connect(usage_db)
    app = make_app(DuckDBSource(writer), refresh_s=0.05, interval=True)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            while app.refreshes["calls"] < 1:
                await pilot.pause(0.01)
            grid = app.query_one("#calls-tail", DataGrid)
            assert all(row["tenant"] != "initech" for row in grid.rows)
            while app.inflight:  # land between two refreshes
                await pilot.pause(0.01)
            before = app.refreshes["calls"]
            _dataset.insert_usage(
                writer,
                [
                    _dataset.usage_row(
                        777_777,
                        _dataset.NOW - timedelta(seconds=5),
                        tenant="initech",
                        context="platform",
                        purpose="scoring",
                        cost=Decimal("0.42"),
                    )
                ],
            )
            rebuild_rollup(writer, timezone="UTC")
            while app.refreshes["calls"] < before + 1:
                await pilot.pause(0.01)
            await pilot.pause()
            assert grid.rows[0]["tenant"] == "initech"
            assert grid.rows[0]["cost_usd"] == Decimal("0.42")
    finally:
        writer.close()


class _GateReader:
    """A real DuckDB reader whose queries wait for a gate (to hold a refresh in flight)."""

    def __init__(self, inner: Reader, gate: threading.Event) -> None:
        self.inner = inner
        self.gate = gate

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        self.gate.wait(10)
        return self.inner.query(sql, params)

    def close(self) -> None:
        self.inner.close()


async def test_tick_is_skipped_while_the_previous_refresh_runs_and_keys_still_answer(
    source: DuckDBSource,
) -> None:
    gate = threading.Event()
    app = make_app(source)
    app.source = lambda: _GateReader(source(), gate)
    async with app.run_test(size=SIZE) as pilot:
        assert "overview" in app.inflight
        assert app.start_refresh("overview") is False
        assert app.skipped_ticks["overview"] == 1
        await pilot.press("2")  # input does not wait for the query
        assert app.current == "spend"
        gate.set()
        await settle(pilot)
        assert app.refreshes["spend"] == 1


async def test_only_the_visible_view_refreshes(source: DuckDBSource) -> None:
    app = make_app(source, refresh_s=0.02, interval=True)
    async with app.run_test(size=SIZE) as pilot:
        while app.refreshes["overview"] < 4:
            await pilot.pause(0.02)
        assert all(
            app.refreshes[view] == 0
            for view in ("spend", "budgets", "circuits", "profiles", "calls")
        )


async def test_unchanged_rows_are_not_redrawn(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.start_refresh("overview")
        await settle(pilot)
        assert app.refreshes["overview"] == 2
        assert app.redraws["overview"] == 1


async def test_pause_stops_the_interval_and_r_forces_a_refresh(source: DuckDBSource) -> None:
    app = make_app(source, refresh_s=0.02, interval=True)
    async with app.run_test(size=SIZE) as pilot:
        while app.refreshes["overview"] < 1:
            await pilot.pause(0.02)
        await pilot.press("p")
        await settle(pilot)
        paused_at = app.refreshes["overview"]
        await pilot.pause(0.2)
        assert app.refreshes["overview"] == paused_at
        assert "paused" in str(app.query_one("#status").render())
        await pilot.press("r")
        await settle(pilot)
        assert app.refreshes["overview"] == paused_at + 1


async def test_failed_query_keeps_last_good_rows_marked_stale_then_recovers(usage_db: Path) -> None:
    writer = connect(usage_db)
    app = make_app(DuckDBSource(writer))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            await settle(pilot)
            grid = app.query_one("#calls-tail", DataGrid)
            good = list(grid.rows)
            writer.execute("ALTER TABLE llm_usage RENAME TO llm_usage_away")
            await pilot.press("r")
            await settle(pilot)
            assert "calls" in app.errors
            assert grid.rows == good
            view = app.view("calls")
            assert view.has_class("-stale")
            error = str(view.query_one(".view-error").render())
            assert "query failed" in error
            assert "last good data from 15:00:00" in error
            assert "retrying" in error
            assert "STALE" in str(app.query_one("#status").render())
            writer.execute("ALTER TABLE llm_usage_away RENAME TO llm_usage")
            await pilot.press("r")
            await settle(pilot)
            assert "calls" not in app.errors
            assert not view.has_class("-stale")
    finally:
        writer.close()


async def test_rows_past_the_cap_are_counted_not_loaded(source: DuckDBSource) -> None:
    app = make_app(source, max_rows=5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        grid = app.query_one("#calls-tail", DataGrid)
        assert len(grid.rows) == 5
        assert grid.truncated
        assert "5 of >5" in str(grid.query_one(".grid-title").render())


async def test_a_query_that_never_answered_says_unavailable_not_empty(usage_db: Path) -> None:
    writer = connect(usage_db)
    writer.execute("ALTER TABLE llm_usage RENAME TO llm_usage_away")
    app = make_app(DuckDBSource(writer))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            await settle(pilot)
            title = str(app.query_one("#calls-tail", DataGrid).query_one(".grid-title").render())
            assert "unavailable" in title
            assert "no data yet" in str(app.view("calls").query_one(".view-error").render())
    finally:
        writer.close()


def _with_newcomer(usage_db: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the dataset with one more call, by a tenant the dataset does not have."""
    copy = tmp_path / name
    shutil.copyfile(usage_db, copy)
    con = connect(copy)
    try:
        _dataset.insert_usage(
            con,
            [
                _dataset.usage_row(
                    888_888,
                    _dataset.NOW - timedelta(seconds=2),
                    tenant="newcomer",
                    context="platform",
                    purpose="scoring",
                    cost=Decimal("0.07"),
                )
            ],
        )
        rebuild_rollup(con, timezone="UTC")
        con.execute("CHECKPOINT").fetchall()
    finally:
        con.close()
    return copy


@pytest.mark.parametrize("how", ["replaced", "rewritten in place"])
async def test_a_database_file_replaced_under_the_dashboard_is_reopened(
    usage_db: Path, tmp_path: Path, how: str
) -> None:
    source = DuckDBSource.open(usage_db)
    app = make_app(source)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            await settle(pilot)
            grid = app.query_one("#calls-tail", DataGrid)
            assert all(row["tenant"] != "newcomer" for row in grid.rows)
            fresh = _with_newcomer(usage_db, tmp_path, "fresh.duckdb")
            if how == "replaced":
                os.replace(fresh, usage_db)  # a new file at the path (db compact does this)
            else:
                shutil.copyfile(fresh, usage_db)  # the same file, new bytes
            await pilot.press("r")
            await settle(pilot)
            assert not app.errors, app.errors
            assert grid.rows[0]["tenant"] == "newcomer"
            assert isinstance(source.reader, LocalReader)
            assert source.reader.opened == 2
    finally:
        source.close()


async def test_updated_time_advances_only_on_a_good_read_and_a_failed_read_is_shown(
    usage_db: Path, tmp_path: Path
) -> None:
    now = [_dataset.NOW]
    source = DuckDBSource.open(usage_db)
    app = ComptrollerApp(
        source,
        options=AppOptions(timezone="UTC", export_dir=tmp_path),
        clock=lambda: now[0],
        interval_refresh=False,
    )
    status = lambda: str(app.query_one("#status").render())  # noqa: E731
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert "updated 15:00:00" in status()
            assert "STALE" not in status()
            aside = tmp_path / "aside.duckdb"
            os.replace(usage_db, aside)  # the file is gone
            now[0] += timedelta(seconds=5)
            await pilot.press("r")
            await settle(pilot)
            assert "updated 15:00:00" in status()  # not 15:00:05: that read failed
            assert "STALE: read failed 15:00:05" in status()
            error = str(app.view("overview").query_one(".view-error").render())
            assert "cannot read" in error
            assert "no such database" in error
            assert "last good data from 15:00:00" in error
            os.replace(aside, usage_db)
            now[0] += timedelta(seconds=5)
            await pilot.press("r")
            await settle(pilot)
            assert "updated 15:00:10" in status()
            assert "STALE" not in status()
            assert not app.view("overview").has_class("-stale")
    finally:
        source.close()
