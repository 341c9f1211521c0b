"""Reprice through the shared pricer: every row gets exactly `Pricer.price` at its own time."""

from __future__ import annotations

import datetime as dt
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from usage_db import insert_usage, usage_row

from comptroller.analytics._reprice import reprice
from comptroller.config._control import PriceSpec
from comptroller.pricing import GENAI_PRICES_SOURCE, UNPRICED_SOURCE, Pricer, Usage

FALLBACK = {"ollama:llama3": PriceSpec(input_mtok=Decimal("0.3"), output_mtok=Decimal("0.9"))}
PRICER = Pricer(FALLBACK)

# (provider as stored, response model, request model): tiers (Anthropic, Google), a price that
# changes on a date (claude-opus-4-6, 2026-03-13 UTC) and with the time of day (DeepSeek),
# a response model genai-prices does not know (priced as the request model), the fallback
# registry, and calls nobody can price.
MODELS: list[tuple[str | None, str | None, str | None]] = [
    ("openai", "gpt-4o-mini", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("anthropic", "claude-opus-4-6", "claude-opus-4-6"),
    ("gcp.gen_ai", "gemini-2.5-pro", "gemini-2.5-pro"),
    ("deepseek", "deepseek-chat", "deepseek-chat"),
    ("perplexity", "sonar", "sonar"),
    ("openai", "my-finetune-2025", "gpt-4o"),
    ("openai", None, "gpt-4o"),
    ("ollama", "llama3", "llama3"),
    ("acme", "x-1", "x-1"),
    (None, "gpt-4o", "gpt-4o"),
]
START = dt.datetime(2026, 3, 11, tzinfo=dt.UTC)


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        provider, response_model, request_model = MODELS[i % len(MODELS)]
        input_tokens = rnd.choice([0, 1, 999, 200_000, 200_001, rnd.randrange(0, 400_000)])
        cache_read = rnd.randrange(0, input_tokens + 1)
        cache_write = rnd.randrange(0, input_tokens - cache_read + 1)
        output_tokens = rnd.randrange(0, 20_000)
        reasoning = rnd.randrange(0, output_tokens + 1)
        row = usage_row(
            START + dt.timedelta(seconds=rnd.randrange(0, 4 * 86_400)),
            provider=provider,
            model=request_model,
            cost="123",
        )
        row.update(
            response_model=response_model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=reasoning,
        )
        rows.append(row)
    return rows


def _expected(row: dict[str, Any]) -> tuple[Decimal | None, str]:
    model = PRICER.priced_model(row["provider"], row["response_model"], row["request_model"])
    if model is None:
        return None, UNPRICED_SOURCE
    usage = Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
    )
    price = PRICER.price(row["provider"], model, usage, row["ts"])
    if price.cost_usd is None:
        return None, price.source
    return price.cost_usd.quantize(Decimal("1e-10"), rounding=ROUND_HALF_UP), price.source


def _stored(con: Any) -> dict[str, tuple[Decimal | None, str]]:
    rows = con.execute("SELECT usage_id, cost_usd, price_source FROM llm_usage").fetchall()
    return {usage_id: (cost, source) for usage_id, cost, source in rows}


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_every_row_gets_the_pricers_cost_at_its_own_timestamp(con: Any, zone: str) -> None:
    rows = _rows(330, seed=7)
    insert_usage(con, rows)

    result = reprice(con, pricer=PRICER, timezone=zone)

    stored = _stored(con)
    assert {row["usage_id"]: _expected(row) for row in rows} == stored
    assert result.changed == len(rows)
    assert {source for _, source in stored.values()} == {
        GENAI_PRICES_SOURCE,
        "fallback",
        UNPRICED_SOURCE,
    }


def test_a_price_change_at_utc_midnight_splits_a_local_day(con: Any) -> None:
    # 2026-03-12 21:00 and 23:00 in New York straddle the new claude-opus-4-6 price (UTC date).
    before, after = (
        dt.datetime(2026, 3, 13, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 13, 3, tzinfo=dt.UTC),
    )
    early = usage_row(
        dt.datetime(2026, 3, 12, 23, 59, tzinfo=dt.UTC),
        provider="anthropic",
        model="claude-opus-4-6",
        input_tokens=300_000,
    )
    late = {**early, "usage_id": "late", "ts": before}
    later = {**early, "usage_id": "later", "ts": after}
    insert_usage(con, [early, late, later])

    reprice(con, pricer=PRICER, timezone="America/New_York")

    stored = _stored(con)
    assert stored[early["usage_id"]] == _expected(early)
    assert stored["late"] == stored["later"] == _expected(late)
    assert stored[early["usage_id"]] != stored["late"]


def test_inconsistent_counts_are_unpriced_not_computed(con: Any) -> None:
    row = usage_row(START, input_tokens=100)
    row["cache_read_tokens"] = 500
    insert_usage(con, [row])

    reprice(con, pricer=PRICER)

    assert _stored(con)[row["usage_id"]] == (None, UNPRICED_SOURCE)


def test_a_second_run_changes_nothing(con: Any) -> None:
    insert_usage(con, _rows(44, seed=3))
    reprice(con, pricer=PRICER)

    again = reprice(con, pricer=PRICER)

    assert again.changed == 0
    assert again.rollup_groups == 0
