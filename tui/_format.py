"""How figures are written on screen: money, counts, bars, sparklines, instants."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from comptroller.money import DASH, usd, usd_column

_SPARK = "▁▂▃▄▅▆▇█"
NONE = DASH


def money(value: object) -> str:
    """One amount in USD (`comptroller.money.usd`): never a non-zero amount as zero;
    NULL (unpriced) is a dash."""
    return usd(value, none=NONE)


def money_column(values: Iterable[object]) -> list[str]:
    """Amounts shown together (a table column, "X → Y") at one precision
    (`comptroller.money.usd_column`); NULL (unpriced) is a dash."""
    return usd_column(values, none=NONE)


def count(value: object) -> str:
    """An integer with thousands separators."""
    if value is None:
        return NONE
    return f"{int(value):,}" if isinstance(value, int | float | Decimal) else str(value)


def millis(value: object) -> str:
    """A latency in ms or s."""
    if value is None:
        return NONE
    ms = float(value) if isinstance(value, int | float | Decimal) else 0.0
    return f"{ms / 1000:.1f} s" if ms >= 10_000 else f"{ms:.0f} ms"


def percent(value: float | None) -> str:
    """A fraction as a whole percentage."""
    return NONE if value is None else f"{value * 100:.0f}%"


def bar(fraction: float, width: int = 12) -> str:
    """A horizontal bar; past 100% the bar is full (the percentage says how far past)."""
    filled = round(max(0.0, min(fraction, 1.0)) * width)
    return "█" * filled + "░" * (width - filled)


def sparkline(values: Sequence[float]) -> str:
    """One character per value, scaled to the largest; all-zero is a flat line."""
    top = max(values, default=0.0)
    if top <= 0:
        return _SPARK[0] * len(values)
    return "".join(
        _SPARK[min(len(_SPARK) - 1, int(v / top * (len(_SPARK) - 1) + 0.5))] for v in values
    )


def instant(value: object, *, now: datetime, tz: str) -> str:
    """`HH:MM:SS` for today, `MM-DD HH:MM` otherwise, in the configured time zone."""
    if not isinstance(value, datetime):
        return NONE if value is None else str(value)
    zone = ZoneInfo(tz)
    local = value.astimezone(zone) if value.tzinfo else value
    if local.date() == now.astimezone(zone).date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%m-%d %H:%M")


def ago(value: object, *, now: datetime) -> str:
    """How long before `now`: `45s`, `12m`, `3h 5m`, `2d 4h`."""
    if not isinstance(value, datetime):
        return NONE
    seconds = max(0, int((now - value).total_seconds()))
    delta = timedelta(seconds=seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{delta.days}d {delta.seconds // 3600}h"


def text(value: object) -> str:
    """Any cell value as text; NULL is a dash."""
    if value is None:
        return NONE
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
