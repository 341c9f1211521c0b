"""No double counting: leaf spans only, one layer only, never twice with a usage row."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from comptroller import semconv as sc
from comptroller.pricing import GENAI_PRICES_SOURCE

from .conftest import Running
from .helpers import fixture_spans, genai_spans, load_fixture, log_records

LANGCHAIN_OVER_OPENAI = {
    "scope": "opentelemetry.instrumentation.langchain",
    "resource": {"service.name": "app"},
    "spans": [
        {
            "name": "ChatOpenAI.chat",
            "attributes": {
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.prompt_tokens": 1000,
                "gen_ai.usage.completion_tokens": 100,
                "traceloop.span.kind": "task",
            },
            "children": [
                {
                    "name": "openai.chat",
                    "kind": "CLIENT",
                    "attributes": {
                        "llm.request.type": "chat",
                        "gen_ai.system": "openai",
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.response.model": "gpt-4o-2024-08-06",
                        "gen_ai.usage.prompt_tokens": 1000,
                        "gen_ai.usage.completion_tokens": 100,
                    },
                }
            ],
        }
    ],
}


def _export(running: Running, spans: list) -> None:  # type: ignore[type-arg]
    OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(spans)


def test_agent_and_workflow_parents_are_not_counted(running: Running) -> None:
    for dialect in ("logfire", "openinference", "openllmetry"):
        _export(running, fixture_spans(load_fixture(dialect)))
    usage = running.sql("select source, input_tokens from llm_usage order by source")
    assert usage == [
        {"source": "derived:logfire", "input_tokens": 120},
        {"source": "derived:openinference", "input_tokens": 120},
        {"source": "derived:openllmetry", "input_tokens": 120},
    ]


def test_framework_and_sdk_layers_count_once_child_first(running: Running) -> None:
    spans = fixture_spans(LANGCHAIN_OVER_OPENAI)  # the child ends, and exports, first
    _export(running, spans)
    assert running.sql("select span_id, input_tokens from llm_usage") == [
        {"span_id": f"{spans[0].get_span_context().span_id:016x}", "input_tokens": 1000}
    ]


def test_framework_and_sdk_layers_count_once_parent_first(running: Running) -> None:
    child, parent = fixture_spans(LANGCHAIN_OVER_OPENAI)
    _export(running, [parent])
    assert running.sql("select count(*) as n from llm_usage") == [{"n": 1}]
    _export(running, [child])  # the lower layer arrives: the framework's row is superseded
    assert running.sql("select span_id from llm_usage") == [
        {"span_id": f"{child.get_span_context().span_id:016x}"}
    ]
    assert running.sql("select sum(calls) as calls from llm_usage_daily") == [{"calls": 1}]


def test_derived_row_is_priced_with_genai_prices_and_marked(running: Running) -> None:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 5000,
        "gen_ai.usage.output_tokens": 700,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 500,
        "gen_ai.usage.reasoning.output_tokens": 200,
    }
    _export(
        running, genai_spans([("chat claude", attrs)], "opentelemetry.instrumentation.anthropic")
    )
    row = running.sql("select cost_usd, price_source, source, estimated from llm_usage")[0]
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=5000, output_tokens=700, cache_read_tokens=1000, cache_write_tokens=500
        ),
        "claude-sonnet-4-5",
        provider_id="anthropic",
    ).total_price
    assert row == {
        "cost_usd": Decimal(expected).quantize(Decimal("1e-10")),
        "price_source": GENAI_PRICES_SOURCE,
        "source": "derived:genai",
        "estimated": False,
    }


def test_unknown_model_is_unpriced_not_free(running: Running) -> None:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "ibm.watsonx.ai",
        "gen_ai.request.model": "granite-x",
        "gen_ai.usage.input_tokens": 10,
    }
    _export(running, genai_spans([("chat", attrs)], "x"))
    assert running.sql("select cost_usd, price_source from llm_usage") == [
        {"cost_usd": None, "price_source": "unpriced"}
    ]


def test_exclusive_input_counts_are_made_inclusive(running: Running) -> None:
    # Anthropic's own usage excludes cached input; Logfire's Anthropic spans copy it as is.
    attrs = {
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 50,
        "gen_ai.usage.details.cache_read_tokens": 2000,
    }
    _export(
        running, genai_spans([("Message with 'claude-sonnet-4-5'", attrs)], "logfire.anthropic")
    )
    assert running.sql("select input_tokens, cache_read_tokens from llm_usage") == [
        {"input_tokens": 2010, "cache_read_tokens": 2000}
    ]


def test_span_with_a_comptroller_usage_row_is_counted_once(running: Running) -> None:
    fixture = load_fixture("comptroller")
    attempt_spec = fixture["spans"][0]["children"][0]
    # The user also runs openai-v2: its span is a child of comptroller's attempt span.
    attempt_spec["children"] = [
        {
            "name": "chat gpt-4o-mini",
            "kind": "CLIENT",
            "scope": "opentelemetry.instrumentation.openai_v2",
            "attributes": load_fixture("openai_v2")["spans"][0]["attributes"],
        }
    ]
    spans = fixture_spans(fixture)
    sdk_child, attempt, call = spans
    # The third-party child arrives first and is counted provisionally…
    _export(running, [sdk_child])
    assert running.sql("select source from llm_usage") == [{"source": "derived:openai_v2"}]
    # …until the attempt span and its usage row arrive.
    _export(running, [attempt, call])
    usage = log_records(
        [
            (
                sc.EVENT_USAGE,
                {
                    sc.USAGE_ID: "u-1",
                    sc.GEN_AI_PROVIDER_NAME: "openai",
                    sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
                    sc.GEN_AI_USAGE_INPUT_TOKENS: 120,
                    sc.GEN_AI_USAGE_OUTPUT_TOKENS: 30,
                    sc.COST_USD: "0.0000345",
                    sc.OUTCOME: "ok",
                },
            )
        ],
        parent=attempt,
    )
    OTLPLogExporter(timeout=60, endpoint=running.endpoint("logs")).export(usage)
    assert running.sql("select usage_id, source from llm_usage") == [
        {"usage_id": "u-1", "source": "comptroller"}
    ]
    assert running.sql("select sum(calls) as calls from llm_usage_daily") == [{"calls": 1}]


def test_usage_row_before_third_party_span_prevents_derived_row(running: Running) -> None:
    spans = genai_spans(
        [("chat", load_fixture("openai_v2")["spans"][0]["attributes"])],
        "opentelemetry.instrumentation.openai_v2",
    )
    usage = log_records(
        [(sc.EVENT_USAGE, {sc.USAGE_ID: "u-2", sc.GEN_AI_USAGE_INPUT_TOKENS: 120})], parent=spans[0]
    )
    OTLPLogExporter(timeout=60, endpoint=running.endpoint("logs")).export(usage)
    _export(running, spans)
    assert running.sql("select usage_id from llm_usage") == [{"usage_id": "u-2"}]
