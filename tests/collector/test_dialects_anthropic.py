"""Anthropic calls with cache reads and writes cost what genai-prices says, whoever reported them.

Anthropic's own `usage.input_tokens` excludes cached input; the GenAI conventions' input count
includes it. Each instrumentation picked one: the collector reads each the way it is meant,
on the native decoder's path and the reference's alike.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from comptroller.collector._native import available

from .conftest import Running
from .helpers import genai_spans

MODEL = "claude-sonnet-4-5"
# The true usage of the call: input inclusive of the cached parts.
INPUT, CACHE_READ, CACHE_WRITE, OUTPUT = 10_000, 2_000, 500, 100
EXCLUSIVE = INPUT - CACHE_READ - CACHE_WRITE  # what Anthropic's API itself reports as input

# dialect -> (instrumentation scope, the span's attributes as that instrumentation writes them)
REPORTS: dict[str, tuple[str, dict[str, Any]]] = {
    "openlit": (
        "openlit.otel.tracing",
        {
            "gen_ai.system": "anthropic",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.usage.input_tokens": EXCLUSIVE,  # Anthropic's count, copied
            "gen_ai.usage.output_tokens": OUTPUT,
            "gen_ai.usage.cache_read_input_tokens": CACHE_READ,
            "gen_ai.usage.cache_creation_input_tokens": CACHE_WRITE,
            "gen_ai.application_name": "app",
        },
    ),
    "logfire": (
        "pydantic-ai",
        {
            "gen_ai.system": "anthropic",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.usage.input_tokens": INPUT,
            "gen_ai.usage.output_tokens": OUTPUT,
            "gen_ai.usage.details.cache_read_tokens": CACHE_READ,
            "gen_ai.usage.details.cache_write_tokens": CACHE_WRITE,
        },
    ),
    "openllmetry": (
        "opentelemetry.instrumentation.anthropic",
        {
            "llm.request.type": "chat",
            "gen_ai.system": "Anthropic",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.usage.prompt_tokens": INPUT,
            "gen_ai.usage.completion_tokens": OUTPUT,
            "gen_ai.usage.cache_read_input_tokens": CACHE_READ,
            "gen_ai.usage.cache_creation_input_tokens": CACHE_WRITE,
        },
    ),
    "openai_v2": (
        "opentelemetry.instrumentation.openai_v2",
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.usage.input_tokens": INPUT,
            "gen_ai.usage.output_tokens": OUTPUT,
            "gen_ai.usage.cache_read.input_tokens": CACHE_READ,
            "gen_ai.usage.cache_creation.input_tokens": CACHE_WRITE,
        },
    ),
    "openinference": (
        "openinference.instrumentation.anthropic",
        {
            "openinference.span.kind": "LLM",
            "llm.provider": "anthropic",
            "llm.system": "anthropic",
            "llm.model_name": MODEL,
            "llm.token_count.prompt": INPUT,
            "llm.token_count.completion": OUTPUT,
            "llm.token_count.prompt_details.cache_read": CACHE_READ,
            "llm.token_count.prompt_details.cache_write": CACHE_WRITE,
        },
    ),
}

PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(not available(), reason="not built"))]


def _true_cost() -> Decimal:
    usage = genai_prices.Usage(
        input_tokens=INPUT,
        cache_read_tokens=CACHE_READ,
        cache_write_tokens=CACHE_WRITE,
        output_tokens=OUTPUT,
    )
    price = genai_prices.calc_price(usage, MODEL, provider_id="anthropic")
    return price.total_price


@pytest.mark.parametrize("native", PATHS, ids=["reference", "native"])
@pytest.mark.parametrize("dialect", sorted(REPORTS))
def test_a_cached_anthropic_call_costs_what_genai_prices_says(
    make_running: Any, dialect: str, native: bool
) -> None:
    running: Running = make_running(native_decoder=native)
    scope, attributes = REPORTS[dialect]
    spans = genai_spans([(f"chat {MODEL}", attributes)], scope)
    exporter = OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces"))
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (row,) = running.sql(
        "select source, provider, input_tokens, cache_read_tokens, cache_write_tokens, "
        "output_tokens, cost_usd from llm_usage"
    )
    assert row["source"] == f"derived:{dialect}"
    assert row["provider"] == "anthropic"
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        INPUT,
        CACHE_READ,
        CACHE_WRITE,
    )
    assert row["cost_usd"] == _true_cost().quantize(Decimal("1e-10"))
    if native:
        assert running.collector.native is not None
        assert running.collector.native.stats.native == 1  # not declined to the reference
