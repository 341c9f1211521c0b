"""What prompt caching saved: cached-read tokens priced as plain input, minus their price.

Method. For a call that read `N` tokens from the provider's prompt cache, the saving is what
those `N` tokens would have cost as plain (uncached) input minus what they cost as cache
reads, in the price tier and at the prices in force for that call: `N × (input −
cache_read)`, with the per-token prices of `Pricer.coefficients` (the arithmetic of
`Pricer.price`, so it equals `price(usage without the cache reads) − price(usage)`).

The ledger does not hold prices, so the `cache_savings` panel takes them as a parameter:
`savings_prices` builds, with the one `Pricer`, a JSON table of the per-token saving of each
(provider, response model, request model), price tier and period of constant prices (UTC
days, as genai-prices' price changes take effect at UTC midnight), for the models the panel
found with cache reads. The panel joins it to the calls, so the figure is one SQL query that
`comptroller sql` reproduces with the same JSON. A model whose price changes with the time
of day (off-peak rates), or that no price source knows, gets no row: its calls are counted
in `unpriced_calls`, their saving unknown (NULL, never 0).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from comptroller.analytics._panels import builtin_panels, run_panel

if TYPE_CHECKING:
    from comptroller.analytics._reader import Reader
    from comptroller.pricing import Pricer

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True, kw_only=True)
class CacheSaving:
    """What prompt caching saved one purpose on one model."""

    purpose: str
    provider: str
    model: str
    calls: int
    """Calls that read from the prompt cache."""
    cache_read_tokens: int
    input_tokens: int
    """All input tokens of those calls (cached ones included)."""
    saved_usd: Decimal | None
    """Saving of the calls whose price is known; None when no call's is."""
    unpriced_calls: int
    """Calls whose saving is unknown (no price, or a time-of-day price)."""


def savings_prices(pricer: Pricer, keys: Iterable[Mapping[str, object]]) -> str:
    """The `$prices` parameter of the `cache_savings` panel for `keys`.

    Args:
        pricer: The pricer (the settings' fallback registry included).
        keys: Rows with `provider`, `response_model`, `request_model`, `first_ts` and
            `last_ts` (the panel's own rows): the models and the instants to price.

    Returns:
        A JSON array: one object per (provider, response model, request model, price tier,
        run of UTC days with the same prices), with the per-token `saving` as a decimal
        string.
    """
    spans: dict[tuple[str, str | None, str | None], tuple[dt.date, dt.date]] = {}
    for row in keys:
        first, last = row.get("first_ts"), row.get("last_ts")
        if not isinstance(first, dt.datetime) or not isinstance(last, dt.datetime):
            continue
        key = (
            str(row.get("provider") or ""),
            _text(row.get("response_model")),
            _text(row.get("request_model")),
        )
        start, end = first.astimezone(dt.UTC).date(), last.astimezone(dt.UTC).date()
        known = spans.get(key)
        spans[key] = (start, end) if known is None else (min(start, known[0]), max(end, known[1]))
    out: list[dict[str, object]] = []
    for (provider, response_model, request_model), (start, end) in sorted(
        spans.items(), key=lambda item: tuple(str(part) for part in item[0])
    ):
        model = pricer.priced_model(provider, response_model, request_model)
        if model is None:
            continue
        runs: list[tuple[dt.date, dt.date, tuple[tuple[int | None, int | None, Decimal], ...]]]
        runs = []
        day = start
        while day <= end:
            at = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            found = pricer.coefficients(provider, model, at)
            if found is None or found.time_of_day:
                break  # a price by the hour: these calls stay unpriced here (see above)
            tiers = tuple((t.above, t.upto, t.input - t.cache_read) for t in found.tiers)
            if runs and runs[-1][2] == tiers:
                runs[-1] = (runs[-1][0], day, tiers)
            else:
                runs.append((day, day, tiers))
            day += _DAY
        else:
            for n, (first_day, last_day, tiers) in enumerate(runs):
                # The first and last runs are open-ended: a call just outside the span found
                # (landed since) is priced as its neighbours are.
                from_ts = None if n == 0 else _midnight(first_day)
                to_ts = None if n == len(runs) - 1 else _midnight(last_day + _DAY)
                for above, upto, saving in tiers:
                    out.append(
                        {
                            "provider": provider,
                            "response_model": response_model,
                            "request_model": request_model,
                            "from_ts": from_ts,
                            "to_ts": to_ts,
                            "above": above,
                            "upto": upto,
                            "saving": str(saving),
                        }
                    )
    return json.dumps(out)


def cache_savings(
    reader: Reader,
    pricer: Pricer,
    *,
    since: dt.date | dt.datetime | None = None,
    until: dt.date | dt.datetime | None = None,
    tenant: str | None = None,
    purpose: str | None = None,
    context: str | None = None,
    timezone: str = "UTC",
) -> list[CacheSaving]:
    """Prompt-cache savings per purpose and model (the `cache_savings` panel), largest first.

    Args:
        reader: Where the ledger is.
        pricer: The pricer (`Pricer.from_settings(settings)`).
        since: First local day (a date) or instant; None: from the start.
        until: Last local day, inclusive (a date), or an exclusive instant; None: to the end.
        tenant: Only this tenant.
        purpose: Only this purpose.
        context: Only this context.
        timezone: The zone local days are cut in (the rollup's).
    """
    panel = builtin_panels()["cache_savings"]
    end = until + _DAY if type(until) is dt.date else until  # a day is inclusive

    def run(prices: str | None) -> list[dict[str, object]]:
        table = run_panel(
            reader,
            panel,
            timezone=timezone,
            since=since,
            until=end,
            tenant=tenant,
            purpose=purpose,
            context=context,
            prices=prices,
        )
        rows: list[dict[str, object]] = table.to_pylist()
        return rows

    # Twice: first which models had cache reads, then with their prices.
    found = run(None)
    if not found:
        return []
    rows = run(savings_prices(pricer, found))
    return [
        CacheSaving(
            purpose=str(row["purpose"]),
            provider=str(row["provider"]),
            model=str(row["model"]),
            calls=_int(row["calls"]),
            cache_read_tokens=_int(row["cache_read_tokens"]),
            input_tokens=_int(row["input_tokens"]),
            saved_usd=row["saved_usd"] if isinstance(row["saved_usd"], Decimal) else None,
            unpriced_calls=_int(row["unpriced_calls"]),
        )
        for row in rows
    ]


def _midnight(day: dt.date) -> str:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).isoformat()


def _int(value: object) -> int:
    return int(value) if isinstance(value, int) else 0


def _text(value: object) -> str | None:
    return None if value is None else str(value)
