"""The embedded sink and the OTLP path produce identical rows."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from comptroller import semconv as sc
from comptroller.collector import EmbeddedSink

from .conftest import Running
from .helpers import DIALECTS, fixture_spans, load_fixture, log_records

TABLES = {
    "spans": "trace_id, span_id",
    "llm_usage": "usage_id",
    "circuit_events": "event_id",
    "llm_usage_daily": "day, tenant, org, context, purpose, provider, model",
}


def test_embedded_sink_and_otlp_land_identical_rows(running: Running, tmp_path: Path) -> None:
    spans = [s for d in DIALECTS for s in fixture_spans(load_fixture(d))]
    records = log_records(
        [
            (
                sc.EVENT_USAGE,
                {
                    sc.USAGE_ID: "u-1",
                    sc.GEN_AI_PROVIDER_NAME: "openai",
                    sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
                    sc.GEN_AI_USAGE_INPUT_TOKENS: 10,
                    sc.COST_USD: "0.000025",
                    sc.TENANT: "t",
                },
            ),
            (sc.EVENT_CIRCUIT_OPENED, {sc.GEN_AI_PROVIDER_NAME: "openai", sc.CIRCUIT_FAILURES: 3}),
        ]
    )
    sink = EmbeddedSink(tmp_path / "embedded.duckdb")
    try:
        assert sink.span_exporter().export(spans) is SpanExportResult.SUCCESS
        assert sink.log_exporter().export(records) is LogRecordExportResult.SUCCESS
        assert (
            OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(spans)
            is SpanExportResult.SUCCESS
        )
        assert (
            OTLPLogExporter(timeout=60, endpoint=running.endpoint("logs")).export(records)
            is LogRecordExportResult.SUCCESS
        )
        for table, order in TABLES.items():
            query = (
                f"select * exclude (first_ts, last_ts) from {table} order by {order}"
                if table.endswith("daily")
                else f"select * from {table} order by {order}"
            )
            embedded = sink.con.cursor().sql(query).to_arrow_table().to_pylist()
            assert embedded, table
            assert embedded == running.sql(query), table
    finally:
        sink.shutdown()


def test_embedded_sink_reports_failure_instead_of_raising(tmp_path: Path) -> None:
    sink = EmbeddedSink(tmp_path / "e.duckdb")
    sink.shutdown()
    spans = fixture_spans(load_fixture("openai_v2"))
    assert sink.span_exporter().export(spans) is SpanExportResult.FAILURE
    sink.shutdown()  # idempotent


def test_embedded_sink_satisfies_the_control_planes_protocol(tmp_path: Path) -> None:
    from comptroller.control._telemetry import TelemetrySink

    sink = EmbeddedSink(tmp_path / "p.duckdb")
    try:
        assert isinstance(sink, TelemetrySink)
    finally:
        sink.shutdown()


def test_the_embedded_sink_takes_the_native_decoder(tmp_path: Path) -> None:
    sink = EmbeddedSink(tmp_path / "embedded.duckdb")
    try:
        spans = fixture_spans(load_fixture("openai_v2"))
        records = log_records([(sc.EVENT_USAGE, {sc.USAGE_ID: "u-9", sc.TENANT: "t"})])
        assert sink.span_exporter().export(spans) is SpanExportResult.SUCCESS
        assert sink.log_exporter().export(records) is LogRecordExportResult.SUCCESS
        assert sink.native is not None
        assert (sink.native.stats.native, sink.native.stats.declined) == (2, 0)
        rows = sink.con.cursor().sql("select source from llm_usage order by 1").fetchall()
        assert rows == [("comptroller",), ("derived:openai_v2",)]
    finally:
        sink.shutdown()
