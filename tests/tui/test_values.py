"""The dashboard's pure parts: time frames, formatting, sparklines and circuit strips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from comptroller.tui import Filters
from comptroller.tui._format import ago, bar, money, sparkline
from comptroller.tui._model import time_frame
from comptroller.tui._views_ops import circuit_strip

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
    [(None, "—"), (0, "$0.00"), (1234.5, "$1,234.50"), (0.0042, "$0.0042")],
)
def test_money_never_shows_unpriced_as_zero(value: object, shown: str) -> None:
    assert money(value) == shown


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
