"""SVG snapshots of every view at 80×24 and 160×48: fixed data, fixed 'now', no timing.

Update after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from comptroller.tui import VIEW_IDS, DuckDBSource
from comptroller.tui._views_money import SpendView

from .conftest import make_app, settle

SnapCompare = Callable[..., bool]


def _show(view_number: int) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        if view_number != 1:
            await pilot.press(str(view_number))
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("view", VIEW_IDS)
def test_view_snapshot(
    snap_compare: SnapCompare, source: DuckDBSource, view: str, size: tuple[int, int]
) -> None:
    app = make_app(source)
    assert snap_compare(app, terminal_size=size, run_before=_show(VIEW_IDS.index(view) + 1))


def test_light_theme_snapshot(snap_compare: SnapCompare, source: DuckDBSource) -> None:
    app = make_app(source, theme="textual-light")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_show(3))


def test_drill_down_snapshot(snap_compare: SnapCompare, source: DuckDBSource) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await _show(2)(pilot)
        await pilot.press("enter")
        spend = pilot.app.query_one(SpendView)
        for _ in range(500):  # the selection reaches the view as a message
            if spend.drill is not None:
                break
            await pilot.pause(0.01)
        assert spend.drill is not None, "enter on a purpose did not drill into it"
        await settle(pilot)

    assert snap_compare(make_app(source), terminal_size=(80, 24), run_before=run_before)
