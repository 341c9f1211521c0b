"""OTLP/HTTP: encodings, gzip, status codes, partial success, idempotency, auth, read API."""

from __future__ import annotations

import functools
import gzip

import httpx
import pyarrow.ipc
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from comptroller import semconv as sc

from .conftest import Running
from .helpers import fixture_spans, genai_spans, load_fixture, log_records, otlp_json
from .helpers import usage_event as _usage_event

PB = {"Content-Type": "application/x-protobuf"}
# Generous timeouts: CI machines run other suites beside this one.
_post = functools.partial(httpx.post, timeout=60)
_get = functools.partial(httpx.get, timeout=60)
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}


def test_sdk_exporter_protobuf_gzip_lands_spans(running: Running) -> None:
    exporter = OTLPSpanExporter(
        timeout=60, endpoint=running.endpoint("traces"), compression=Compression.Gzip
    )
    spans = fixture_spans(load_fixture("openai_v2"))
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    got = running.sql("select name, dialect, input_tokens from spans")
    assert got == [{"name": "chat gpt-4o-mini", "dialect": "openai_v2", "input_tokens": 120}]


def test_usage_row_and_events_land_from_sdk_log_exporter(running: Running) -> None:
    exporter = OTLPLogExporter(timeout=60, endpoint=running.endpoint("logs"))
    records = log_records(
        [
            _usage_event("u-1"),
            (
                sc.EVENT_CIRCUIT_OPENED,
                {
                    sc.GEN_AI_PROVIDER_NAME: "openai",
                    sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
                    sc.CIRCUIT_FAILURES: 5,
                    sc.CIRCUIT_REASON: "5xx",
                },
            ),
            (
                sc.EVENT_PROFILE_ACTIVATED,
                {
                    sc.SCOPE_KIND: "org",
                    sc.SCOPE_ID: "acme",
                    sc.PURPOSE: "reasoning",
                    sc.PROFILE_VERSION: 3,
                    sc.PROFILE_MODEL: "openai:gpt-4o",
                    sc.ACTOR: "ops",
                },
            ),
            (
                sc.EVENT_BUDGET_EXCEEDED,
                {
                    sc.TENANT: "acme-eu",
                    sc.CONTEXT: "support",
                    sc.PURPOSE: "reasoning",
                    sc.BUDGET_CAP_USD: "10",
                    sc.BUDGET_SPENT_USD: "10.5",
                    sc.BUDGET_DAY: "2026-11-21",
                },
            ),
            ("some.other.event", {"x": 1}),
        ]
    )
    assert exporter.export(records) is LogRecordExportResult.SUCCESS
    usage = running.sql(
        "select usage_id, cost_usd::VARCHAR as cost, budget_cap_usd::VARCHAR as cap, source, tenant, input_tokens, latency_ms from llm_usage"
    )
    assert usage == [
        {
            "usage_id": "u-1",
            "cost": "0.0035000000",
            "cap": "10.0000000000",
            "source": "comptroller",
            "tenant": "acme-eu",
            "input_tokens": 1000,
            "latency_ms": 812.5,
        }
    ]
    assert running.sql("select state, failures, provider from circuit_events") == [
        {"state": "opened", "failures": 5, "provider": "openai"}
    ]
    assert running.sql("select action, scope_kind, version, actor from profile_events") == [
        {"action": "activated", "scope_kind": "org", "version": 3, "actor": "ops"}
    ]
    assert running.sql(
        "select kind, day::VARCHAR as day, spent_usd::VARCHAR as spent from budget_events"
    ) == [{"kind": "exceeded", "day": "2026-11-21", "spent": "10.5000000000"}]


@pytest.mark.parametrize("gzipped", [False, True])
def test_json_encoding_lands_the_same_rows_as_protobuf(running: Running, gzipped: bool) -> None:
    spans = genai_spans([("chat gpt-4o", CHAT)], "opentelemetry.instrumentation.openai_v2")
    body = otlp_json(encode_spans(spans))
    headers = {"Content-Type": "application/json"}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    response = _post(running.endpoint("traces"), content=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}
    got = running.sql("select trace_id, span_id, input_tokens from spans")
    context = spans[0].get_span_context()
    assert got == [
        {
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "input_tokens": 1000,
        }
    ]


def test_logs_and_metrics_accept_json(running: Running) -> None:
    records = log_records([_usage_event("u-json")])
    response = _post(
        running.endpoint("logs"),
        content=otlp_json(encode_logs(records)),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200
    metrics = _post(
        running.endpoint("metrics"), content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert metrics.status_code == 200
    assert running.sql("select usage_id from llm_usage") == [{"usage_id": "u-json"}]


def test_redelivered_spans_and_usage_rows_land_once(running: Running) -> None:
    spans = genai_spans([("chat gpt-4o", CHAT)], "opentelemetry.instrumentation.openai_v2")
    records = log_records([_usage_event("u-dup")])
    span_exporter = OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces"))
    log_exporter = OTLPLogExporter(timeout=60, endpoint=running.endpoint("logs"))
    for _ in range(2):
        assert span_exporter.export(spans) is SpanExportResult.SUCCESS
        assert log_exporter.export(records + records) is LogRecordExportResult.SUCCESS
    assert running.sql("select count(*) as n from spans") == [{"n": 1}]
    assert running.sql("select source, count(*) as n from llm_usage group by 1 order by 1") == [
        {"source": "comptroller", "n": 1},
        {"source": "derived:openai_v2", "n": 1},
    ]
    assert running.sql(
        "select calls from llm_usage_daily where model = 'gpt-4o' and tenant = 'acme-eu'"
    ) == [{"calls": 1}]


def test_partial_success_names_rejected_spans_and_lands_the_rest(running: Running) -> None:
    future = dict(CHAT)
    negative = dict(CHAT, **{"gen_ai.usage.output_tokens": -5})
    spans = genai_spans(
        [("ok", CHAT), ("negative", negative), ("future", future)],
        "opentelemetry.instrumentation.openai_v2",
    )
    request = encode_spans(spans)
    for span in request.resource_spans[0].scope_spans[0].spans:
        if span.name == "future":
            span.start_time_unix_nano += 10 * 365 * 86_400 * 10**9
    response = _post(running.endpoint("traces"), content=request.SerializeToString(), headers=PB)
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 2
    assert "negative_tokens" in parsed.partial_success.error_message
    assert "future_timestamp" in parsed.partial_success.error_message
    assert running.sql("select name from spans") == [{"name": "ok"}]
    health = _get(f"{running.url}/health").json()
    assert health["rows_rejected"] == {"negative_tokens": 1, "future_timestamp": 1}


def test_usage_row_without_id_is_rejected_with_reason(running: Running) -> None:
    event = _usage_event("x")
    del event[1][sc.USAGE_ID]
    body = encode_logs(log_records([event, _usage_event("u-ok")])).SerializeToString()
    response = _post(running.endpoint("logs"), content=body, headers=PB)
    parsed = ExportLogsServiceResponse.FromString(response.content)
    assert response.status_code == 200
    assert parsed.partial_success.rejected_log_records == 1
    assert "missing_usage_id" in parsed.partial_success.error_message
    assert running.sql("select usage_id from llm_usage") == [{"usage_id": "u-ok"}]


def _status(response: httpx.Response) -> str:
    return str(status_pb2.Status.FromString(response.content).message)


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason", "kind"),
    [
        (b"\x0a\xff\xff\xff", PB, 400, "malformed protobuf", "bad_protobuf"),
        (b"{not json", {"Content-Type": "application/json"}, 400, "malformed JSON", "bad_json"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\xff\xfe"}]}]}]}',
            {"Content-Type": "application/json"},
            400,
            "invalid UTF-8",
            "bad_json",
        ),
        (b"\x0a\x05\x12\x03\x0a\x01\xff", PB, 400, "malformed protobuf", "bad_protobuf"),
        (
            b"hello",
            {"Content-Type": "text/plain"},
            415,
            "unsupported Content-Type",
            "unsupported_media_type",
        ),
        (
            gzip.compress(b"\x0a\x00" * 100)[:-6],
            dict(PB, **{"Content-Encoding": "gzip"}),
            400,
            "truncated gzip",
            "truncated_gzip",
        ),
        (
            b"\x00\x01",
            dict(PB, **{"Content-Encoding": "br"}),
            415,
            "Content-Encoding",
            "unsupported_encoding",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
            {"Content-Type": "application/json"},
            400,
            "invalid OTLP/JSON",
            "bad_json",
        ),
    ],
    ids=[
        "protobuf",
        "json",
        "utf8-json",
        "utf8-protobuf",
        "content-type",
        "gzip",
        "encoding",
        "hex-id",
    ],
)
def test_bad_input_gets_status_reason_and_is_counted(
    running: Running, body: bytes, headers: dict[str, str], status: int, reason: str, kind: str
) -> None:
    response = _post(running.endpoint("traces"), content=body, headers=headers)
    assert response.status_code == status
    message = (
        _status(response)
        if "protobuf" in response.headers["content-type"]
        else response.json()["message"]
    )
    assert reason.lower() in message.lower()
    assert _get(f"{running.url}/health").json()["requests_rejected"] == {kind: 1}
    # …and the collector keeps serving.
    ok = OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(
        genai_spans([("chat", CHAT)], "x")
    )
    assert ok is SpanExportResult.SUCCESS


def test_body_over_the_limit_gets_413(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running(max_request_bytes=1000)
    response = _post(run.endpoint("traces"), content=b"\x00" * 2000, headers=PB)
    assert response.status_code == 413
    bomb = gzip.compress(b"\x00" * 100_000)
    inflated = _post(
        run.endpoint("traces"), content=bomb, headers=dict(PB, **{"Content-Encoding": "gzip"})
    )
    assert inflated.status_code == 413
    assert "inflates" in _status(inflated)
    assert _get(f"{run.url}/health").json()["requests_rejected"] == {"too_large": 2}


def test_absurd_attribute_is_rejected_per_span(make_running) -> None:  # type: ignore[no-untyped-def]
    from comptroller.collector import Limits

    run = make_running(limits=Limits(max_attribute_bytes=10_000))
    spans = genai_spans([("big", dict(CHAT, blob="x" * 50_000)), ("small", CHAT)], "x")
    response = _post(
        run.endpoint("traces"), content=encode_spans(spans).SerializeToString(), headers=PB
    )
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert response.status_code == 200
    assert parsed.partial_success.rejected_spans == 1
    assert "attribute_too_large" in parsed.partial_success.error_message
    assert run.sql("select name from spans") == [{"name": "small"}]


def test_token_is_required_and_bad_tokens_are_counted(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running(token="s3cret")
    spans = genai_spans([("chat", CHAT)], "x")
    body = encode_spans(spans).SerializeToString()
    assert _post(run.endpoint("traces"), content=body, headers=PB).status_code == 401
    wrong = dict(PB, Authorization="Bearer nope")
    assert _post(run.endpoint("traces"), content=body, headers=wrong).status_code == 401
    assert _post(f"{run.url}/api/query", json={"sql": "select 1"}).status_code == 401
    good = OTLPSpanExporter(
        endpoint=run.endpoint("traces"), headers={"Authorization": "Bearer s3cret"}
    )
    assert good.export(spans) is SpanExportResult.SUCCESS
    assert run.collector.pipeline.wait_landed(30)  # acknowledged once logged, landed after
    health = _get(f"{run.url}/health", headers={"Authorization": "Bearer s3cret"}).json()
    assert health["unauthorized"] == 3
    assert health["rows_landed"]["spans"] == 1


def test_listening_beyond_loopback_without_token_is_refused() -> None:
    from comptroller.collector._service import check_bind
    from comptroller.errors import ConfigError

    with pytest.raises(ConfigError, match="bearer token"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "t")


def test_query_api_answers_arrow_and_refuses_writes(running: Running) -> None:
    OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(
        genai_spans([("chat", CHAT)], "x")
    )
    response = _post(
        f"{running.url}/api/query",
        json={
            "sql": "select count(*) as n from spans where name = $name",
            "params": {"name": "chat"},
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert pyarrow.ipc.open_stream(response.content).read_all().to_pylist() == [{"n": 1}]
    for sql in ("delete from spans", "select 1; select 2", "select * from read_csv('/etc/passwd')"):
        refused = _post(f"{running.url}/api/query", json={"sql": sql})
        assert refused.status_code == 400, sql
        assert refused.json()["error"]
    assert running.sql("select count(*) as n from spans") == [{"n": 1}]


def test_remote_reader_reads_through_the_collector(running: Running) -> None:
    from comptroller.analytics import open_reader

    OTLPLogExporter(timeout=60, endpoint=running.endpoint("logs")).export(
        log_records([_usage_event("u-r")])
    )
    reader = open_reader(url=running.url)
    try:
        assert reader.query("select usage_id from llm_usage").to_pylist() == [{"usage_id": "u-r"}]
    finally:
        reader.close()


def test_budget_state_endpoint_serves_todays_spend(running: Running) -> None:
    OTLPLogExporter(timeout=60, endpoint=running.endpoint("logs")).export(
        log_records([_usage_event("u-b")])
    )
    response = _get(f"{running.url}/api/budget-state")
    assert response.status_code == 200
    states = response.json()
    assert [
        (s["tenant"], s["context"], s["purpose"], s["spent_usd"], s["cap_usd"]) for s in states
    ] == [("acme-eu", "support", "reasoning", "0.0035000000", "10.0000000000")]


def test_health_reports_queue_rows_and_last_flush(running: Running) -> None:
    OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(
        genai_spans([("chat", CHAT)], "x")
    )
    assert running.collector.pipeline.wait_landed(30)
    health = _get(f"{running.url}/health").json()
    assert health["status"] == "ok"
    assert health["ingest_log"]["landed_seq"] == health["ingest_log"]["accepted_seq"] == 1
    del health["ingest_log"]
    assert health["queue"] == {
        "rows": 0,
        "requests": 0,
        "bytes": 0,
        "max_rows": 50_000,
        "max_bytes": 64 << 20,
    }
    assert health["rows_landed"] == {"spans": 1, "llm_usage": 1}
    assert health["last_flush"] is not None
    assert MessageToDict(ExportTraceServiceResponse()) == {}


def test_health_tells_which_path_trace_exports_took(running: Running) -> None:
    exporter = OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces"))
    exporter.export(genai_spans([("chat", CHAT)], "x"))
    # The native decoder declines what the reference rejects; the reference says why.
    exporter.export(genai_spans([("bad", dict(CHAT, **{"gen_ai.usage.input_tokens": -1}))], "x"))
    assert running.collector.pipeline.wait_landed(30)
    health = _get(f"{running.url}/health").json()
    assert health["native_decoder"] == {
        "enabled": True,
        "native": 1,
        "declined": 1,
        "last_declined": "negative token count",
        "reasons": {"negative token count": 1},
    }
    assert health["rows_rejected"] == {"negative_tokens": 1}
    assert running.sql("select name from spans") == [{"name": "chat"}]


def test_the_native_decoder_can_be_turned_off(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running(native_decoder=False)
    OTLPSpanExporter(timeout=60, endpoint=run.endpoint("traces")).export(
        genai_spans([("chat", CHAT)], "x")
    )
    assert run.collector.pipeline.wait_landed(30)
    assert _get(f"{run.url}/health").json()["native_decoder"] == {
        "enabled": False,
        "reason": "disabled by setting",
    }
    assert run.sql("select count(*) as n from llm_usage") == [{"n": 1}]
