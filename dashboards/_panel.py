"""Panels: one TOML file each, naming the SQL, its parameters and how to show the result."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, get_args
from zoneinfo import ZoneInfo

from comptroller.errors import UsageError

Display: TypeAlias = Literal["table", "bar", "sparkline", "timeline", "stat"]
View: TypeAlias = Literal["overview", "spend", "budgets", "circuits", "profiles", "calls", "alerts"]
ParamType: TypeAlias = Literal["string", "int", "float", "bool", "date", "timestamp"]
ParamValue: TypeAlias = str | int | float | bool | dt.date | dt.datetime | None

DISPLAYS: tuple[str, ...] = get_args(Display)
VIEWS: tuple[str, ...] = get_args(View)
PARAM_TYPES: tuple[str, ...] = get_args(ParamType)

BUILTIN_PARAMS: dict[str, str] = {
    "now": "the current instant (TIMESTAMPTZ)",
    "today": "today's date in the configured time zone (DATE)",
    "day_start": "local midnight that began today (TIMESTAMPTZ)",
    "day_end": "local midnight that ends today (TIMESTAMPTZ)",
    "month_start": "first day of this month in the configured time zone (DATE)",
    "day_elapsed_h": "hours since local midnight, at least 1/60 (DOUBLE): burn-rate divisor",
    "day_remaining_h": "hours until the next local midnight (DOUBLE)",
}
"""Parameters every panel may use without declaring them; filled in at run time."""

_PARAM_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
# Strings, quoted identifiers and comments in one left-to-right scan: whichever starts first
# wins, so an apostrophe in a comment does not open a string that swallows the `$params`
# after it, and `--` inside a string is not a comment.
_NOT_CODE_RE = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?(?:\*/|\Z)", re.DOTALL
)
_RELATIVE_RE = re.compile(r"^(now|today|day_start|month_start)\s*(?:([+-])\s*(\d+)\s*([smhdw]))?$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, kw_only=True)
class Param:
    """A parameter a panel's SQL takes (`$name`)."""

    name: str
    type: ParamType = "string"
    default: ParamValue = None
    """Literal default, or for dates/timestamps a relative one: `today`, `today-6d`,
    `month_start`, `now-1h`, `day_start`. `None` means SQL NULL (usually: no filter)."""
    required: bool = False
    """The caller must give a value; there is no useful default."""
    description: str = ""
    choices: tuple[str, ...] = ()
    """Closed set of values (strings only), shown as a picker by the TUI."""


@dataclass(frozen=True, kw_only=True)
class Panel:
    """One dashboard panel: SQL, its parameters, and how to show the result.

    Attributes:
        name: Unique name (the file's stem unless the file sets `name`).
        title: Heading shown above the panel.
        view: TUI view it belongs to.
        sql: One DuckDB SELECT using `$param` named parameters.
        params: Declared parameters, in file order.
        display: How to show it: table, bar, sparkline, timeline or stat.
        description: One or two sentences on what it shows.
        order: Position within its view (lower first).
        options: Display hints (e.g. `x`, `y`, `series`, `label`, `value`, `format`).
        source: The file it was loaded from.
    """

    name: str
    title: str
    view: View
    sql: str
    params: tuple[Param, ...] = ()
    display: Display = "table"
    description: str = ""
    order: int = 100
    options: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    source: str = ""

    @property
    def uses(self) -> frozenset[str]:
        """Names of the `$parameters` the SQL references."""
        return sql_parameters(self.sql)

    def param(self, name: str) -> Param | None:
        """The declared parameter called `name`, if any."""
        return next((p for p in self.params if p.name == name), None)

    def bind(
        self,
        values: Mapping[str, object] | None = None,
        *,
        now: dt.datetime | None = None,
        timezone: str = "UTC",
    ) -> dict[str, object]:
        """The parameters to run the SQL with: given values over defaults, plus built-ins.

        Only the parameters the SQL references are returned (DuckDB refuses extra ones).

        Raises:
            UsageError: An unknown parameter, a missing required one, or a value that does
                not fit the parameter's type.
        """
        given = dict(values or {})
        unknown = sorted(set(given) - {p.name for p in self.params} - set(BUILTIN_PARAMS))
        if unknown:
            known = ", ".join(p.name for p in self.params) or "none"
            raise UsageError(
                f"panel {self.name!r} has no parameter {', '.join(unknown)} (it takes: {known})"
            )
        clock = Clock.at(now, timezone)
        out: dict[str, object] = {}
        for name in sorted(self.uses):
            if name in given:
                spec = self.param(name)
                value = given[name]
                out[name] = coerce(spec, value, clock) if spec is not None else value
            elif (spec := self.param(name)) is not None:
                if spec.required:
                    raise UsageError(f"panel {self.name!r} needs a value for ${name}")
                out[name] = coerce(spec, spec.default, clock)
            else:
                out[name] = clock.builtin(name)
        return out


@dataclass(frozen=True, kw_only=True)
class Clock:
    """The instant and time zone that relative parameters (`today-6d`) resolve against."""

    now: dt.datetime
    zone: ZoneInfo

    @classmethod
    def at(cls, now: dt.datetime | None, timezone: str) -> Clock:
        zone = ZoneInfo(timezone)
        instant = now or dt.datetime.now(dt.UTC)
        if instant.tzinfo is None:
            raise UsageError("now must be timezone-aware")
        return cls(now=instant.astimezone(zone), zone=zone)

    @property
    def today(self) -> dt.date:
        return self.now.date()

    @property
    def day_start(self) -> dt.datetime:
        return dt.datetime.combine(self.today, dt.time(), tzinfo=self.zone)

    @property
    def day_end(self) -> dt.datetime:
        return dt.datetime.combine(self.today + dt.timedelta(days=1), dt.time(), tzinfo=self.zone)

    def builtin(self, name: str) -> object:
        if name == "now":
            return self.now
        if name == "today":
            return self.today
        if name == "day_start":
            return self.day_start
        if name == "day_end":
            return self.day_end
        if name == "month_start":
            return self.today.replace(day=1)
        # Through UTC: Python subtracts datetimes of one tzinfo as wall-clock times, which
        # is an hour off on the days the clocks change.
        now = self.now.astimezone(dt.UTC)
        if name == "day_elapsed_h":
            return max((now - self.day_start.astimezone(dt.UTC)).total_seconds(), 60.0) / 3600
        if name == "day_remaining_h":
            return max((self.day_end.astimezone(dt.UTC) - now).total_seconds(), 0.0) / 3600
        raise UsageError(f"${name} is neither declared nor built in")

    def relative(self, text: str) -> dt.date | dt.datetime | None:
        match = _RELATIVE_RE.match(text.strip())
        if match is None:
            return None
        base_name, sign, amount, unit = match.groups()
        base = self.builtin(base_name)
        assert isinstance(base, dt.date)
        if sign is None:
            return base
        delta = dt.timedelta(**{_UNITS[unit]: int(amount)})
        return base + delta if sign == "+" else base - delta


def coerce(spec: Param, value: object, clock: Clock) -> object:
    """`value` as the Python type of `spec` (relative dates resolved against `clock`).

    Raises:
        UsageError: The value does not fit.
    """
    if value is None:
        return None
    where = f"${spec.name} ({spec.type})"
    try:
        if spec.type == "string":
            text = str(value)
            if spec.choices and text not in spec.choices:
                raise ValueError(f"not one of {', '.join(spec.choices)}")
            return text
        if spec.type == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"true", "1", "yes"}:
                return True
            if lowered in {"false", "0", "no"}:
                return False
            raise ValueError("not a boolean")
        if spec.type == "int":
            if isinstance(value, bool):
                raise ValueError("not an integer")
            return int(str(value))
        if spec.type == "float":
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(str(value))
        if spec.type == "date":
            if isinstance(value, dt.datetime):
                return value.astimezone(clock.zone).date()
            if isinstance(value, dt.date):
                return value
            resolved = clock.relative(str(value))
            if resolved is not None:
                return resolved.date() if isinstance(resolved, dt.datetime) else resolved
            return dt.date.fromisoformat(str(value))
        # timestamp
        if isinstance(value, dt.datetime):
            stamp = value
        elif isinstance(value, dt.date):
            stamp = dt.datetime.combine(value, dt.time(), tzinfo=clock.zone)
        else:
            resolved = clock.relative(str(value))
            if isinstance(resolved, dt.datetime):
                stamp = resolved
            elif isinstance(resolved, dt.date):
                stamp = dt.datetime.combine(resolved, dt.time(), tzinfo=clock.zone)
            else:
                stamp = dt.datetime.fromisoformat(str(value))
        return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=clock.zone)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{where}: cannot use {value!r}: {exc}") from None


def sql_parameters(sql: str) -> frozenset[str]:
    """Names of the `$name` parameters in `sql` (string literals and comments ignored)."""
    stripped = _NOT_CODE_RE.sub(" ", sql)
    return frozenset(_PARAM_RE.findall(stripped))
