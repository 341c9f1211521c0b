"""Derived usage rows are priced by the shared pricer, at the span's start time."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from comptroller.collector import Normaliser
from comptroller.config._control import PriceSpec
from comptroller.pricing import (
    FALLBACK_SOURCE,
    GENAI_PRICES_SOURCE,
    UNPRICED_SOURCE,
    Pricer,
    Usage,
)

PRICER = Pricer()
PEAK = dt.datetime(2025, 9, 2, 12, 0, tzinfo=dt.UTC)
OFF_PEAK = dt.datetime(2025, 9, 2, 20, 30, 0, 123_456, tzinfo=dt.UTC)


def _derived(
    spans: list[tuple[dict[str, Any], dt.datetime]], normaliser: Normaliser | None = None
) -> list[dict[str, Any]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("opentelemetry.instrumentation.someone")
    for attributes, when in spans:
        start = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
        span = tracer.start_span(
            "chat", kind=SpanKind.CLIENT, attributes=attributes, start_time=start
        )
        span.end(end_time=start + 1_000_000_000)
    provider.shutdown()
    batch = (normaliser or Normaliser()).traces(encode_spans(memory.get_finished_spans()))
    rows: list[dict[str, Any]] = batch.tables["derive"].to_pylist()
    return rows


def _chat(provider: str, model: str, **tokens: int) -> dict[str, Any]:
    names = {
        "input_tokens": "gen_ai.usage.input_tokens",
        "output_tokens": "gen_ai.usage.output_tokens",
        "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
        "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    }
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        **{names[kind]: count for kind, count in tokens.items()},
    }


def test_derived_rows_are_priced_at_the_span_start_not_at_landing() -> None:
    tokens = {"input_tokens": 10_000, "output_tokens": 500, "cache_read_tokens": 2_000}
    chat = _chat("deepseek", "deepseek-chat", **tokens)

    peak, off_peak = _derived([(chat, PEAK), (chat, OFF_PEAK)])

    usage = Usage(**tokens)
    expected_peak = PRICER.price("deepseek", "deepseek-chat", usage, PEAK)
    expected_off = PRICER.price("deepseek", "deepseek-chat", usage, OFF_PEAK)
    assert expected_peak.cost_usd != expected_off.cost_usd
    assert (peak["cost_usd"], peak["price_source"]) == (
        str(expected_peak.cost_usd),
        GENAI_PRICES_SOURCE,
    )
    assert Decimal(off_peak["cost_usd"]) == expected_off.cost_usd


@pytest.mark.parametrize(
    ("spelling", "model"),
    [
        ("google", "gemini-2.5-pro"),  # canonicalised to gcp.gen_ai, priced as google
        ("gcp.vertex_ai", "gemini-2.5-pro"),
        ("xai", "grok-3"),
        ("azure", "gpt-4o"),
        ("mistral", "mistral-large-latest"),
        ("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ],
)
def test_provider_spellings_resolve_through_the_shared_alias_map(spelling: str, model: str) -> None:
    (row,) = _derived([(_chat(spelling, model, input_tokens=1_000, output_tokens=300), PEAK)])

    price = PRICER.price(row["provider"], model, Usage(input_tokens=1_000, output_tokens=300), PEAK)
    assert price.source == GENAI_PRICES_SOURCE
    assert (row["cost_usd"], row["price_source"]) == (str(price.cost_usd), price.source)


def test_reasoning_tokens_are_priced_as_reasoning() -> None:
    tokens = {"input_tokens": 3_000, "output_tokens": 8_000, "reasoning_tokens": 6_000}

    (row,) = _derived([(_chat("perplexity", "sonar-deep-research", **tokens), PEAK)])

    with_reasoning = PRICER.price("perplexity", "sonar-deep-research", Usage(**tokens), PEAK)
    as_output = PRICER.price(
        "perplexity", "sonar-deep-research", Usage(input_tokens=3_000, output_tokens=8_000), PEAK
    )
    assert with_reasoning.cost_usd != as_output.cost_usd
    assert row["cost_usd"] == str(with_reasoning.cost_usd)


def test_unknown_response_model_is_priced_as_the_request_model() -> None:
    chat = {**_chat("openai", "gpt-4o", input_tokens=1_000), "gen_ai.response.model": "ft:xyz"}

    (row,) = _derived([(chat, PEAK)])

    expected = PRICER.price("openai", "gpt-4o", Usage(input_tokens=1_000), PEAK)
    assert row["cost_usd"] == str(expected.cost_usd)


def test_unknown_models_are_unpriced_unless_the_fallback_registry_knows_them() -> None:
    chat = _chat("ollama", "llama3", input_tokens=2_000_000, output_tokens=1_000_000)
    registry = Pricer(
        {"ollama:llama3": PriceSpec(input_mtok=Decimal("0.5"), output_mtok=Decimal("1.5"))}
    )

    (default,) = _derived([(chat, PEAK)])
    (configured,) = _derived([(chat, PEAK)], Normaliser(prices=registry))

    assert (default["cost_usd"], default["price_source"]) == (None, UNPRICED_SOURCE)
    assert (Decimal(configured["cost_usd"]), configured["price_source"]) == (
        Decimal("2.5"),
        FALLBACK_SOURCE,
    )


@pytest.mark.parametrize("path", ["reference", "native"])
def test_a_cost_the_instrumentation_reported_stands_in_only_where_no_price_is_known(
    path: str,
) -> None:
    from comptroller.collector._native import NativeDecoder, available

    if path == "native" and not available():
        pytest.skip("the native decoder is not built here")
    unknown = {**_chat("ollama", "llama3", input_tokens=100), "gen_ai.usage.cost": 0.0042}
    known = {
        **_chat("openai", "gpt-4o-mini", input_tokens=1_000_000),
        "gen_ai.usage.cost": 99.0,  # genai-prices knows better: $0.15
    }
    odd = {**_chat("ollama", "llama3", input_tokens=100), "gen_ai.usage.cost": float("nan")}
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("opentelemetry.instrumentation.someone")
    for attributes in (unknown, known, odd):
        tracer.start_span("chat", kind=SpanKind.CLIENT, attributes=attributes).end()
    provider.shutdown()
    request = encode_spans(memory.get_finished_spans())
    normaliser = Normaliser()
    if path == "native":
        batch = NativeDecoder(normaliser).normalise("traces", request.SerializeToString())
        assert not isinstance(batch, str), batch
    else:
        batch = normaliser.traces(request)
    rows = batch.tables["derive"].to_pylist()
    got = [(r["request_model"], r["cost_usd"], r["price_source"]) for r in rows]
    assert got[0] == ("llama3", "0.0042", "reported")
    assert got[1][0] == "gpt-4o-mini"
    assert Decimal(got[1][1]) == Decimal("0.15")
    assert got[1][2].startswith("genai-prices@")
    assert got[2] == ("llama3", None, UNPRICED_SOURCE)
