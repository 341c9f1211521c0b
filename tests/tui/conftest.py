"""Fixtures of the dashboard tests: a fixed usage database and a way to wait for a view."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from comptroller.tui import (
    AppOptions,
    ComptrollerApp,
    DuckDBSource,
    Operator,
    ProfileAdmin,
    ReaderFactory,
)

from . import _dataset


@pytest.fixture(scope="session")
def _built_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _dataset.build(tmp_path_factory.mktemp("tui-db") / "usage.duckdb")


@pytest.fixture
def usage_db(_built_db: Path, tmp_path: Path) -> Path:
    """A private copy of the fixed dataset (tests may write to it)."""
    target = tmp_path / "usage.duckdb"
    shutil.copyfile(_built_db, target)
    return target


@pytest.fixture
def source(usage_db: Path) -> Iterator[DuckDBSource]:
    src = DuckDBSource.open(usage_db)
    yield src
    src.close()


def make_app(
    source: ReaderFactory,
    *,
    tmp_path: Path | None = None,
    operator: Operator | None = None,
    admin: ProfileAdmin | None = None,
    max_rows: int = 500,
    refresh_s: float = 2.0,
    interval: bool = False,
    theme: str = "textual-dark",
) -> ComptrollerApp:
    """The dashboard over `source` at the dataset's fixed 'now'."""
    options = AppOptions(
        refresh_s=refresh_s,
        max_rows=max_rows,
        timezone="UTC",
        theme=theme,
        export_dir=tmp_path or Path("."),
    )
    return ComptrollerApp(
        source,
        options=options,
        clock=lambda: _dataset.NOW,
        operator=operator,
        admin=admin,
        interval_refresh=interval,
    )


async def settle(pilot: Pilot[None], *, rounds: int = 1000) -> None:
    """Wait until the current view shows rows for the current state and nothing runs."""
    app = pilot.app
    assert isinstance(app, ComptrollerApp)
    for _ in range(rounds):
        await pilot.pause(0.01)
        if app.is_loaded(app.current) and not app.inflight:
            await _until_screen_is_still(pilot)
            return
    raise AssertionError(
        f"view {app.current} did not load: errors={app.errors} refreshes={app.refreshes} "
        f"inflight={app.inflight} gen={app.generation} loaded={app.loaded_generation}"
    )


async def _until_screen_is_still(pilot: Pilot[None], *, rounds: int = 200) -> None:
    """Wait until three consecutive frames are identical.

    A handler may still repaint (the status bar, a table's cursor) just after the last worker
    reported; a snapshot taken then differs from run to run on a loaded machine.
    """
    previous, still = "", 0
    for _ in range(rounds):
        await pilot.pause(0.02)
        frame = pilot.app.export_screenshot()
        still = still + 1 if frame == previous else 0
        if still >= 2:
            return
        previous = frame
