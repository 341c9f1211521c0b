"""Values of the dashboard: filters, ranges, the operator, query results and the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    # Only the results hold Arrow tables: the first frame does not wait for Arrow to import.
    import pyarrow as pa

RangeName: TypeAlias = Literal["today", "7d", "30d"]
RANGES: tuple[RangeName, ...] = ("today", "7d", "30d")
ViewId: TypeAlias = Literal[
    "overview", "spend", "budgets", "circuits", "profiles", "calls", "alerts"
]
VIEW_IDS: tuple[ViewId, ...] = (
    "overview",
    "spend",
    "budgets",
    "circuits",
    "profiles",
    "calls",
    "alerts",
)

Clock: TypeAlias = Callable[[], datetime]
"""Returns the current time, timezone-aware. Injected so that tests and snapshots fix 'now'."""


def system_clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class Filters:
    """The global filters, applied by every view."""

    tenant: str | None = None
    purpose: str | None = None
    context: str | None = None
    attribute: str | None = None
    """Only calls with this attribution (`user=alice`, `feature=search`, `tag.team=growth`):
    applied by the views that read the calls themselves (calls, spend by attribution); the
    rollups behind the other panels have no attribution."""
    range: RangeName = "today"

    def with_(self, **changes: object) -> Filters:
        """A copy with `changes`; empty strings clear a filter."""
        clean = {k: (None if v == "" else v) for k, v in changes.items()}
        return replace(self, **clean)  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line for the header: the range and each filter that is set."""
        parts = [f"range {self.range}"]
        for name in ("tenant", "purpose", "context", "attribute"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value}")
        return " · ".join(parts)


@dataclass(frozen=True, kw_only=True, slots=True)
class TimeFrame:
    """The instants the queries are anchored on, computed once per refresh."""

    now: datetime
    day_start: datetime
    """Start of today in the configured time zone (the budget day)."""
    month_start: datetime
    since: datetime
    """Start of the selected range (today, the last 7 or the last 30 days, today included)."""
    hour_ago: datetime
    timezone: str
    bucket: Literal["hour", "day"]
    """Sparkline bucket: hours for today, days otherwise."""
    buckets: tuple[datetime, ...]
    """The local start of every bucket of the range, oldest first."""

    @property
    def day_fraction(self) -> float:
        """How much of today has elapsed, in (0, 1]."""
        elapsed = (self.now - self.day_start).total_seconds()
        return min(1.0, max(elapsed / 86_400.0, 1.0 / 86_400.0))


def time_frame(now: datetime, range_: RangeName, timezone: str) -> TimeFrame:
    """The `TimeFrame` of `range_` at `now` in `timezone` (an IANA name)."""
    tz = ZoneInfo(timezone)
    local = now.astimezone(tz)
    day_start_local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    days = {"today": 1, "7d": 7, "30d": 30}[range_]
    since_local = day_start_local - timedelta(days=days - 1)
    if range_ == "today":
        bucket: Literal["hour", "day"] = "hour"
        buckets = tuple(
            day_start_local.replace(tzinfo=None) + timedelta(hours=h) for h in range(24)
        )
    else:
        bucket = "day"
        buckets = tuple(since_local.replace(tzinfo=None) + timedelta(days=d) for d in range(days))
    return TimeFrame(
        now=now,
        day_start=day_start_local,
        month_start=day_start_local.replace(day=1),
        since=since_local,
        hour_ago=now - timedelta(hours=1),
        timezone=timezone,
        bucket=bucket,
        buckets=buckets,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Operator:
    """Who runs the dashboard with write rights; absent means read-only."""

    name: str
    role: str
    org: str | None = None
    """The org an org admin administers."""
    domain: str | None = None
    """The domain a domain admin administers."""


@dataclass(frozen=True, kw_only=True, slots=True)
class QueryResult:
    """Rows of one query, capped: `truncated` says there were more than `len(table)`."""

    table: pa.Table
    truncated: bool = False

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (bounded by the cap)."""
        return self.table.to_pylist()  # type: ignore[no-any-return]

    def same_as(self, other: QueryResult | None) -> bool:
        """Whether `other` holds the same rows, so a redraw can be skipped."""
        return (
            other is not None
            and other.truncated == self.truncated
            and other.table.schema.equals(self.table.schema)
            and other.table.equals(self.table)
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ViewData:
    """Everything one refresh of a view produced."""

    results: dict[str, QueryResult] = field(default_factory=dict)
    frame: TimeFrame | None = None

    def get(self, key: str) -> QueryResult | None:
        """The result named `key`, if that query ran."""
        return self.results.get(key)
