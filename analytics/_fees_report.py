"""Spend beyond the tokens and beyond the rollup dimensions: non-token fees per purpose and
model (the `fees` panel), and spend per end user, session, feature or tag (the
`spend_by_attribution` panel), for `comptroller report` and its JSON."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import Reader
from comptroller.money import usd_column

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True, kw_only=True)
class FeeLine:
    """The non-token fees of one (purpose, provider, model) over a range."""

    purpose: str
    provider: str
    model: str
    calls: int
    """Calls that reported fees."""
    web_searches: int
    storage_searches: int
    code_executions: int
    fees_usd: Decimal | None
    """Their cost (part of the calls' cost); None when none of them has a known price."""
    unpriced_calls: int
    """Calls whose fees have no known price (their fee cost is not in `fees_usd`)."""


@dataclass(frozen=True, kw_only=True)
class AttributedSpend:
    """Spend of one value of one attribution dimension over a range."""

    dimension: str
    """`user`, `session`, `feature` or `tag.<name>`."""
    value: str
    cost_usd: Decimal | None
    calls: int
    unpriced_calls: int
    fees_usd: Decimal | None


def _bounds(since: dt.date | None, until: dt.date | None) -> tuple[dt.date | None, dt.date | None]:
    # `until` is an inclusive local day; the panels take an exclusive instant.
    return since, (until + _DAY if until is not None else None)


def fee_spend(
    reader: Reader,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    tenant: str | None = None,
    timezone: str = "UTC",
) -> list[FeeLine]:
    """Non-token fees per purpose and model over local days `since` .. `until` (inclusive),
    largest first."""
    start, end = _bounds(since, until)
    rows: list[dict[str, Any]] = run_panel(
        reader, builtin_panels()["fees"], timezone=timezone, since=start, until=end, tenant=tenant
    ).to_pylist()
    return [
        FeeLine(
            purpose=row["purpose"],
            provider=row["provider"],
            model=row["model"],
            calls=int(row["calls"]),
            web_searches=int(row["web_searches"]),
            storage_searches=int(row["storage_searches"]),
            code_executions=int(row["code_executions"]),
            fees_usd=row["fees_usd"],
            unpriced_calls=int(row["unpriced_calls"]),
        )
        for row in rows
    ]


def spend_by_attribution(
    reader: Reader,
    by: str | None = None,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    tenant: str | None = None,
    timezone: str = "UTC",
    limit: int = 1000,
) -> list[AttributedSpend]:
    """Spend per value of `by` (`user`, `session`, `feature`, `tag.<name>`; None: users,
    features and every tag) over local days `since` .. `until` (inclusive), largest first."""
    start, end = _bounds(since, until)
    rows: list[dict[str, Any]] = run_panel(
        reader,
        builtin_panels()["spend_by_attribution"],
        timezone=timezone,
        since=start if start is not None else dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        until=end if end is not None else "now",
        by=by,
        tenant=tenant,
        limit=limit,
    ).to_pylist()
    return [
        AttributedSpend(
            dimension=row["dimension"],
            value=row["value"],
            cost_usd=row["cost_usd"],
            calls=int(row["calls"]),
            unpriced_calls=int(row["unpriced_calls"]),
            fees_usd=row["fees_usd"],
        )
        for row in rows
    ]


def fees_markdown(lines: Sequence[FeeLine]) -> str:
    """Non-token fees as a Markdown section (empty when no call reported any)."""
    if not lines:
        return ""
    amounts = usd_column(line.fees_usd for line in lines)
    out = [
        "## 🔎 Non-token fees (included in the spend)",
        "",
        "| purpose | model | calls | web searches | file searches | code runs | fees |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, line in enumerate(lines):
        model = f"{line.provider}:{line.model}" if line.provider else line.model
        out.append(
            f"| {line.purpose} | {model} | {line.calls} | {line.web_searches} "
            f"| {line.storage_searches} | {line.code_executions} | {amounts[i]} |"
        )
    unpriced = sum(line.unpriced_calls for line in lines)
    if unpriced:
        out += ["", f"{unpriced} calls reported fees with no known price: not in the spend."]
    return "\n".join(out) + "\n"


def attribution_markdown(lines: Sequence[AttributedSpend], by: str | None) -> str:
    """Spend by attribution as a Markdown section."""
    head = f"## 👤 Spend by {by}" if by else "## 👤 Spend by end user, feature and tag"
    if not lines:
        return f"{head}\n\nNo call in the range carried this attribution.\n"
    costs = usd_column(line.cost_usd for line in lines)
    fees = usd_column(line.fees_usd for line in lines)
    out = [head, "", "| who | value | spend | calls | fees |", "| --- | --- | ---: | ---: | ---: |"]
    for i, line in enumerate(lines):
        out.append(f"| {line.dimension} | {line.value} | {costs[i]} | {line.calls} | {fees[i]} |")
    return "\n".join(out) + "\n"


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def fees_json(lines: Sequence[FeeLine]) -> list[dict[str, object]]:
    """Non-token fees as JSON-ready objects (amounts as exact strings)."""
    return [
        {
            "purpose": line.purpose,
            "provider": line.provider,
            "model": line.model,
            "calls": line.calls,
            "web_searches": line.web_searches,
            "storage_searches": line.storage_searches,
            "code_executions": line.code_executions,
            "fees_usd": _text(line.fees_usd),
            "unpriced_calls": line.unpriced_calls,
        }
        for line in lines
    ]


def attribution_json(lines: Sequence[AttributedSpend]) -> list[dict[str, object]]:
    """Spend by attribution as JSON-ready objects (amounts as exact strings)."""
    return [
        {
            "dimension": line.dimension,
            "value": line.value,
            "cost_usd": _text(line.cost_usd),
            "calls": line.calls,
            "unpriced_calls": line.unpriced_calls,
            "fees_usd": _text(line.fees_usd),
        }
        for line in lines
    ]
