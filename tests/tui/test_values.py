"""The dashboard's pure parts (time frames, formatting, sparklines and circuit strips), and
the values the money views show."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from comptroller.tui import DuckDBSource, Filters
from comptroller.tui._format import ago, bar, money, money_column, sparkline
from comptroller.tui._model import time_frame
from comptroller.tui._views_money import refusal_why
from comptroller.tui._views_ops import circuit_strip
from comptroller.tui._widgets import DataGrid

from . import _dataset
from .conftest import make_app, settle

NOW = datetime(2026, 3, 14, 15, 0, tzinfo=UTC)


def test_today_starts_at_local_midnight_of_the_configured_zone() -> None:
    frame = time_frame(datetime(2026, 3, 14, 23, 30, tzinfo=UTC), "today", "Europe/Paris")
    # 23:30 UTC is already 00:30 on the 15th in Paris.
    assert frame.day_start == datetime(2026, 3, 15, 0, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert frame.bucket == "hour"
    assert len(frame.buckets) == 24


@pytest.mark.parametrize(("range_", "days"), [("7d", 7), ("30d", 30)])
def test_ranges_cover_whole_local_days_including_today(range_: str, days: int) -> None:
    frame = time_frame(NOW, range_, "UTC")  # type: ignore[arg-type]
    assert frame.since == datetime(2026, 3, 14, tzinfo=UTC) - timedelta(days=days - 1)
    assert len(frame.buckets) == days
    assert frame.month_start == datetime(2026, 3, 1, tzinfo=UTC)


def test_filters_describe_only_what_is_set_and_empty_clears() -> None:
    filters = Filters().with_(tenant="acme", purpose="")
    assert filters.describe() == "range today · tenant=acme"
    assert filters.with_(tenant="").tenant is None


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "—"),
        (0, "$0.00"),
        (1234.5, "$1,234.50"),
        (0.0042, "$0.0042"),
        (Decimal("0.0000342"), "$0.0000342"),  # was "$0.0000": a spent budget read as free
        (0.000234, "$0.000234"),
    ],
)
def test_money_never_shows_unpriced_or_a_small_amount_as_zero(value: object, shown: str) -> None:
    assert money(value) == shown


def test_money_read_together_shares_one_precision() -> None:
    assert money_column([Decimal("0.0000342"), Decimal("0.0002"), None]) == [
        "$0.0000342",
        "$0.0002000",
        "—",
    ]


def test_why_a_key_refused_calls_gives_the_numbers_of_its_last_refusal() -> None:
    assert refusal_why({"refused_calls": 0, "last_refusal": None}) == ""
    last: dict[str, object] = {
        "cap_usd": Decimal("0.0002"),
        "spent_usd": Decimal("0.0000342"),
        "reserved_usd": Decimal("0"),
        "attributes": json.dumps({"comptroller.budget.requested_usd": "0.00018"}),
    }
    row: dict[str, object] = {"refused_calls": 2, "last_refusal": last}
    assert refusal_why(row) == "needed $0.000180 > $0.000166 left"
    last["attributes"] = "{}"  # the control plane did not record what the call needed
    assert refusal_why(row) == "worst case > $0.000166 left"


async def test_a_key_that_refused_calls_shows_as_refused_in_the_budgets_and_overview(
    usage_db: Path,
) -> None:
    # A key whose every call today was refused: no usage row, only the refusal events.
    con = duckdb.connect(str(usage_db))
    try:
        for n in range(3):
            con.execute(
                "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
                "cap_usd, spent_usd, reserved_usd, attributes) VALUES (?, ?, ?, 'rejected', "
                "'initech', 'ops', 'scoring', 0.0002, 0.0000342, 0, ?)",
                [
                    f"refused-{n}",
                    _dataset.NOW - timedelta(minutes=5 + n),
                    _dataset.NOW.date(),
                    json.dumps({"comptroller.budget.requested_usd": "0.00018"}),
                ],
            )
    finally:
        con.close()
    source = DuckDBSource.open(usage_db)
    try:
        app = make_app(source)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot)
            tile = app.query_one("#tile-budgets", DataGrid)
            assert ("initech", "refused") in {
                (row["tenant"], str(row["status"])) for row in tile.shown
            }
            await pilot.press("3")
            await settle(pilot)
            grid = app.query_one("#budget-state", DataGrid)
            index = next(i for i, r in enumerate(grid.shown) if r["tenant"] == "initech")
            cells = {
                column.key: cell.plain
                for column, cell in zip(grid.columns, grid.table.get_row_at(index), strict=True)
            }
            assert cells["status"] == "refused"
            assert cells["refused_calls"] == "3"
            assert cells["why"] == "needed $0.000180 > $0.000166 left"
            assert cells["cap_usd"] == "$0.0002"
            assert cells["spent_usd"] == "$0.00"  # nothing landed: no call ran
    finally:
        source.close()


def test_sparkline_scales_to_the_largest_value_and_flat_when_all_zero() -> None:
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█"
    assert sparkline([0, 0]) == "▁▁"


def test_bar_is_full_past_the_cap() -> None:
    assert bar(0.5, 4) == "██░░"
    assert bar(2.6, 4) == "████"


def test_ago_rounds_down_to_the_largest_unit() -> None:
    assert ago(NOW - timedelta(seconds=59), now=NOW) == "59s"
    assert ago(NOW - timedelta(hours=1, minutes=5), now=NOW) == "1h 5m"


def test_circuit_strip_carries_the_worst_state_per_bucket_forward() -> None:
    frame = time_frame(NOW, "today", "UTC")
    events = [
        {"ts": NOW - timedelta(hours=5), "state": "opened"},
        {"ts": NOW - timedelta(hours=5) + timedelta(minutes=10), "state": "closed"},
        {"ts": NOW - timedelta(minutes=3), "state": "opened"},
    ]
    strip = circuit_strip(events, frame).plain
    assert strip[:10] == "·" * 10  # nothing known before the first change
    assert strip[10] == "█"  # opened and closed within 10:00–11:00: the worst shows
    assert strip[11:14] == "▁▁▁"
    assert strip[14:16] == "██"  # opened at 14:57, open now (15:00 starts the current hour)
    assert strip[16:] == " " * 8  # the future
