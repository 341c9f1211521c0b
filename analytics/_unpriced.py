"""Which calls are unpriced: the one definition `reprice` and `budget check` both count by.

A call is unpriced when its cost is unknown (NULL, price source `unpriced`) or is only the
control plane's reservation standing in for a price it did not have (price source
`reservation`, an estimated row). Neither is a price: a budget whose calls include them may
look safer than it is, and `comptroller reprice` is what turns them into prices.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from comptroller.analytics._reader import Reader

UNPRICED_SOURCES: Final = ("unpriced", "reservation")
"""Price sources that stand for no price."""


def unpriced_sql(prefix: str = "") -> str:
    """The SQL predicate over llm_usage (columns prefixed with `prefix`) of an unpriced call."""
    sources = ", ".join(f"'{source}'" for source in UNPRICED_SOURCES)
    return f"({prefix}cost_usd IS NULL OR {prefix}price_source IN ({sources}))"


@dataclass(frozen=True, kw_only=True)
class UnpricedCalls:
    """Unpriced calls of one budget key and model."""

    tenant: str
    context: str
    purpose: str
    provider: str
    model: str
    calls: int

    @property
    def name(self) -> str:
        """`provider:model`."""
        return f"{self.provider}:{self.model}"

    @property
    def key(self) -> tuple[str, str, str]:
        """(tenant, context, purpose), as `BudgetState.key` (`""` for an absent part)."""
        return (self.tenant, self.context, self.purpose)


def unpriced_calls(
    reader: Reader, *, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> list[UnpricedCalls]:
    """The unpriced calls started in [`since`, `until`), per budget key and model."""
    rows = reader.query(
        f"""
        SELECT coalesce(tenant, '') AS tenant, coalesce(context, '') AS context,
               coalesce(purpose, '') AS purpose,
               coalesce(provider, '') AS provider,
               coalesce(response_model, request_model, '') AS model,
               count(*) AS calls
        FROM llm_usage
        WHERE {unpriced_sql()}
          AND ($since IS NULL OR ts >= $since::TIMESTAMPTZ)
          AND ($until IS NULL OR ts < $until::TIMESTAMPTZ)
        GROUP BY ALL
        ORDER BY tenant, context, purpose, provider, model
        """,
        {
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
        },
    ).to_pylist()
    return [
        UnpricedCalls(
            tenant=r["tenant"],
            context=r["context"],
            purpose=r["purpose"],
            provider=r["provider"],
            model=r["model"],
            calls=int(r["calls"]),
        )
        for r in rows
    ]
