"""Real OpenTelemetry SDK objects for the collector tests: fixtures, spans, log records."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from comptroller import semconv as sc

FIXTURES = Path(__file__).parent / "fixtures"
DIALECTS = ("comptroller", "openai_v2", "openllmetry", "openlit", "logfire", "openinference")


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def _attr(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def fixture_spans(fixture: Mapping[str, Any]) -> list[ReadableSpan]:
    """Make the fixture's spans with the real SDK (nested as the instrumentation nests them)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(fixture["resource"]))
    provider.add_span_processor(SimpleSpanProcessor(memory))

    def make(spec: Mapping[str, Any]) -> None:
        tracer = provider.get_tracer(spec.get("scope", fixture["scope"]))
        kind = getattr(trace.SpanKind, spec.get("kind", "INTERNAL"))
        attributes = {k: _attr(v) for k, v in spec["attributes"].items()}
        with tracer.start_as_current_span(spec["name"], kind=kind, attributes=attributes):
            for child in spec.get("children", ()):
                make(child)

    for spec in fixture["spans"]:
        make(spec)
    provider.shutdown()
    return list(memory.get_finished_spans())


def genai_spans(spans: Sequence[tuple[str, Mapping[str, Any]]], scope: str) -> list[ReadableSpan]:
    """Flat sibling spans (name, attributes) under one tracer scope."""
    return fixture_spans(
        {
            "scope": scope,
            "resource": {"service.name": "app"},
            "spans": [{"name": n, "kind": "CLIENT", "attributes": dict(a)} for n, a in spans],
        }
    )


def log_records(
    events: Sequence[tuple[str, Mapping[str, Any]]], *, parent: ReadableSpan | None = None
) -> list[ReadableLogRecord]:
    """Real SDK log records (event name, attributes), optionally in a span's context."""
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "app"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("comptroller.control")
    context = None
    if parent is not None:
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent.get_span_context()))
    for name, attributes in events:
        logger.emit(
            event_name=name,
            attributes={k: _attr(v) for k, v in attributes.items()},
            context=context,
        )
    provider.shutdown()
    return list(memory.get_finished_logs())


def otlp_json(message: Message) -> bytes:
    """OTLP/JSON of a request: protobuf JSON with hex trace and span ids."""
    data = json_format.MessageToDict(message)

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                else:
                    fix(value)
        elif isinstance(node, list):
            for item in node:
                fix(item)

    fix(data)
    return json.dumps(data).encode()


def rows(db: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> list[dict[str, Any]]:
    relation = db.execute(sql, params)
    names = [d[0] for d in relation.description]
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def usage_event(usage_id: str) -> tuple[str, dict[str, object]]:
    """A complete comptroller usage record (name, attributes), as the control plane sends."""
    return (
        sc.EVENT_USAGE,
        {
            sc.USAGE_ID: usage_id,
            sc.GEN_AI_PROVIDER_NAME: "openai",
            sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
            sc.GEN_AI_RESPONSE_MODEL: "gpt-4o",
            sc.GEN_AI_OPERATION_NAME: "chat",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 1000,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 100,
            sc.TENANT: "acme-eu",
            sc.ORG: "acme",
            sc.CONTEXT: "support",
            sc.PURPOSE: "reasoning",
            sc.COST_USD: "0.0035",
            sc.PRICE_SOURCE: "genai-prices@0.2.3",
            sc.OUTCOME: "ok",
            sc.BUDGET_CAP_USD: "10",
            sc.ATTEMPT: 1,
            sc.LATENCY_MS: 812.5,
        },
    )
