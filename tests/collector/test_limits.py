"""What one OTLP request may carry: attributes per span or record, value sizes, spans and
records per request; the settings (and OpenTelemetry's variables) that set them; and an honest
exporter's latency while a hostile client sends 15 MB requests of 100k attributes."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace.export import SpanExportResult

from comptroller import semconv as sc
from comptroller.collector._decode import decode
from comptroller.collector._native import NativeDecoder, available
from comptroller.collector._normalise import Limits, Normaliser
from comptroller.config import load_settings
from comptroller.errors import ConfigError

from .conftest import Running
from .helpers import (
    fixture_spans,
    genai_spans,
    load_fixture,
    log_records,
    otlp_json,
    usage_event,
)

PB = {"Content-Type": "application/x-protobuf"}
_post = functools.partial(httpx.post, timeout=60)
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}
MakeRunning = Callable[..., Running]


def _traces(run: Running, body: bytes) -> ExportTraceServiceResponse:
    response = _post(run.endpoint("traces"), content=body, headers=PB)
    assert response.status_code == 200, response.text
    return ExportTraceServiceResponse.FromString(response.content)


def _logs(run: Running, body: bytes) -> ExportLogsServiceResponse:
    response = _post(run.endpoint("logs"), content=body, headers=PB)
    assert response.status_code == 200, response.text
    return ExportLogsServiceResponse.FromString(response.content)


def _landed(run: Running) -> Running:
    assert run.collector.pipeline.wait_landed(30)  # acknowledged once logged, landed after
    return run


def hostile_request(total_bytes: int, attributes: int) -> bytes:
    """One trace export of one span of `attributes` string attributes, ~`total_bytes`."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = b"\1" * 16
    span.span_id = b"\2" * 8
    span.name = "hostile"
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1
    value = "x" * max(total_bytes // attributes - 16, 1)
    span.attributes.extend(
        KeyValue(key=f"a{i}", value=AnyValue(string_value=value)) for i in range(attributes)
    )
    return request.SerializeToString()


# --- settings ----------------------------------------------------------------------------


def test_otel_attribute_limit_variables_set_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "64")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "2048")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4096")
    monkeypatch.setenv("OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT", "32")
    section = load_settings().collector
    # the specific variable wins over the general one; the general one fills the rest
    assert section.max_attribute_bytes == 4096
    assert section.max_record_attribute_bytes == 2048
    assert section.max_span_attributes == 64
    assert section.max_record_attributes == 32


def test_comptroller_settings_win_over_the_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "64")
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_MAX_SPAN_ATTRIBUTES", "500")
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_MAX_SPANS_PER_REQUEST", "100")
    section = load_settings().collector
    assert section.max_span_attributes == 500
    assert section.max_spans_per_request == 100
    assert load_settings(collector={"max_span_attributes": 7}).collector.max_span_attributes == 7


def test_without_variables_the_limits_are_the_documented_defaults() -> None:
    section = load_settings().collector
    assert (section.max_span_attributes, section.max_record_attributes) == (1024, 1024)
    assert section.max_attribute_bytes == section.max_record_attribute_bytes == 1 << 20
    assert section.max_spans_per_request == section.max_records_per_request == 16_384


def test_a_malformed_otel_limit_variable_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "lots")
    with pytest.raises(ConfigError, match="OTEL_ATTRIBUTE_COUNT_LIMIT='lots'"):
        load_settings()


# --- per span, per record, per request ---------------------------------------------------


def test_a_span_over_the_attribute_count_is_rejected_and_the_rest_lands(
    make_running: MakeRunning,
) -> None:
    run = make_running(limits=Limits(max_span_attributes=8))
    many = dict(CHAT, **{f"extra.{i}": i for i in range(4)})  # 9 attributes
    spans = genai_spans([("many", many), ("fits", CHAT)], "x")
    parsed = _traces(run, encode_spans(spans).SerializeToString())
    assert parsed.partial_success.rejected_spans == 1
    assert "too_many_attributes" in parsed.partial_success.error_message
    assert "has more than 8 attributes (the limit)" in parsed.partial_success.error_message
    assert _landed(run).sql("select name from spans") == [{"name": "fits"}]


def test_a_resource_over_the_attribute_count_rejects_its_spans(
    make_running: MakeRunning,
) -> None:
    run = make_running(limits=Limits(max_span_attributes=8))
    request = encode_spans(genai_spans([("a", CHAT), ("b", CHAT)], "x"))
    resource = request.resource_spans[0].resource
    resource.attributes.extend(
        KeyValue(key=f"host.label.{i}", value=AnyValue(string_value="v")) for i in range(8)
    )
    parsed = _traces(run, request.SerializeToString())
    assert parsed.partial_success.rejected_spans == 2
    assert "a resource has more than 8 attributes" in parsed.partial_success.error_message
    assert _landed(run).sql("select count(*) as n from spans") == [{"n": 0}]


def test_a_request_over_the_span_limit_is_rejected_whole(make_running: MakeRunning) -> None:
    run = make_running(limits=Limits(max_spans=3))
    body = encode_spans(genai_spans([(f"s{i}", CHAT) for i in range(4)], "x")).SerializeToString()
    parsed = _traces(run, body)
    assert parsed.partial_success.rejected_spans == 4
    assert "holds 4 spans, the limit is 3: send smaller batches" in (
        parsed.partial_success.error_message
    )
    three = encode_spans(genai_spans([(f"s{i}", CHAT) for i in range(3)], "x"))
    assert not _traces(run, three.SerializeToString()).HasField("partial_success")
    assert _landed(run).sql("select count(*) as n from spans") == [{"n": 3}]


def test_otlp_json_is_cut_before_parsing_and_rejected_per_span(make_running: MakeRunning) -> None:
    request = encode_spans(genai_spans([("many", CHAT), ("fits", CHAT)], "x"))
    request.resource_spans[0].scope_spans[0].spans[0].attributes.extend(
        KeyValue(key=f"a{i}", value=AnyValue(int_value=i)) for i in range(5000)
    )
    body = otlp_json(request)
    # what the parser is given: one attribute over the limit, not 5005
    decoded = decode("traces", "json", body, max_attributes=8)
    assert isinstance(decoded, ExportTraceServiceRequest)
    spans = decoded.resource_spans[0].scope_spans[0].spans
    assert [len(span.attributes) for span in spans] == [9, 5]
    run = make_running(limits=Limits(max_span_attributes=8))
    response = _post(
        run.endpoint("traces"), content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["partialSuccess"] == {
        "rejectedSpans": "1",
        "errorMessage": "1 rejected for too_many_attributes "
        "(span 'many' has more than 8 attributes (the limit))",
    }
    assert _landed(run).sql("select name from spans") == [{"name": "fits"}]


def test_a_big_resource_on_many_spans_is_rejected_with_them(make_running: MakeRunning) -> None:
    run = make_running(limits=Limits(max_resource_fanout_bytes=100_000))
    request = encode_spans(genai_spans([(f"s{i}", CHAT) for i in range(5)], "x"))
    request.resource_spans[0].resource.attributes.add(
        key="k8s.pod.annotations", value=AnyValue(string_value="a" * 30_000)
    )  # 5 copies of 30 kB: 150 kB of rows from a 30 kB request
    parsed = _traces(run, request.SerializeToString())
    assert parsed.partial_success.rejected_spans == 5
    assert "resource_too_large" in parsed.partial_success.error_message
    del request.resource_spans[0].scope_spans[0].spans[3:]  # 3 copies: 90 kB
    assert not _traces(run, request.SerializeToString()).HasField("partial_success")
    assert _landed(run).sql("select count(*) as n from spans") == [{"n": 3}]


def test_a_usage_record_is_rejected_never_truncated(make_running: MakeRunning) -> None:
    run = make_running(limits=Limits(max_record_attribute_bytes=40, max_record_attributes=30))
    name, attributes = usage_event("u-long-cost")
    long_cost = "0.0035" + "0" * 60  # a decimal that truncation would make another number
    body = encode_logs(
        log_records([(name, dict(attributes, **{sc.COST_USD: long_cost})), usage_event("u-ok")])
    ).SerializeToString()
    parsed = _logs(run, body)
    assert parsed.partial_success.rejected_log_records == 1
    assert "attribute_too_large" in parsed.partial_success.error_message
    assert _landed(run).sql("select usage_id from llm_usage") == [{"usage_id": "u-ok"}]


def test_a_record_over_the_attribute_count_or_a_request_over_the_record_limit(
    make_running: MakeRunning,
) -> None:
    run = make_running(limits=Limits(max_record_attributes=17, max_records=2))
    name, attributes = usage_event("u-many")
    assert len(attributes) == 17
    many = dict(attributes, **{"extra": 1})
    parsed = _logs(run, encode_logs(log_records([(name, many)])).SerializeToString())
    assert parsed.partial_success.rejected_log_records == 1
    assert (
        "a record has more than 17 attributes (the limit)" in parsed.partial_success.error_message
    )
    three = log_records([usage_event(f"u-{i}") for i in range(3)])
    parsed = _logs(run, encode_logs(three).SerializeToString())
    assert parsed.partial_success.rejected_log_records == 3
    assert "too_many_records" in parsed.partial_success.error_message
    assert _landed(run).sql("select count(*) as n from llm_usage") == [{"n": 0}]


@pytest.mark.skipif(not available(), reason="the native decoder is not built")
def test_the_native_decoder_stops_at_the_limits_and_leaves_the_answer_to_the_reference() -> None:
    limits = Limits(max_span_attributes=8, max_spans=2, max_record_attributes=17, max_records=1)
    native = NativeDecoder(Normaliser(limits=limits))
    many = dict(CHAT, **{f"extra.{i}": i for i in range(4)})
    body = encode_spans(genai_spans([("many", many)], "x")).SerializeToString()
    assert native.traces(body) == "too many attributes"
    three = encode_spans(genai_spans([(f"s{i}", CHAT) for i in range(3)], "x"))
    assert native.traces(three.SerializeToString()) == "too many spans"
    two = log_records([usage_event("u-1"), usage_event("u-2")])
    assert native.logs(encode_logs(two).SerializeToString()) == "too many records"
    fanout = NativeDecoder(Normaliser(limits=Limits(max_resource_fanout_bytes=1000)))
    request = encode_spans(genai_spans([("a", CHAT), ("b", CHAT)], "x"))
    request.resource_spans[0].resource.attributes.add(
        key="k", value=AnyValue(string_value="a" * 600)
    )
    assert fanout.traces(request.SerializeToString()) == "resource too large for its spans"
    # a hostile span: declined at its 9th attribute (~0.1 ms), not after reading 100k
    assert native.traces(hostile_request(15_000_000, 100_000)) == "too many attributes"


# --- fairness under attack ---------------------------------------------------------------


@pytest.mark.slow
def test_an_honest_exporter_is_acknowledged_while_a_hostile_client_floods(
    make_running: MakeRunning,
) -> None:
    """15 MB requests of 100k attributes, back to back, must not starve an SDK's exports.

    Before the attribute count limit each such request was decoded and landed (~15 MB of
    JSON), the landing queue filled, and the honest exporter got 429 until its 10 s timeout.
    """
    run = make_running()
    body = hostile_request(15_000_000, 100_000)
    stop = threading.Event()
    statuses: list[int] = []

    def hostile() -> None:  # bounded: stops by itself after 60 requests or 60 s
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=60) as client:
            while not stop.is_set() and len(statuses) < 60 and time.monotonic() < deadline:
                statuses.append(
                    client.post(run.endpoint("traces"), content=body, headers=PB).status_code
                )

    flood = [threading.Thread(target=hostile) for _ in range(2)]
    for thread in flood:
        thread.start()
    exporter = OTLPSpanExporter(endpoint=run.endpoint("traces"), timeout=10)
    honest = fixture_spans(load_fixture("openllmetry"))
    latencies: list[float] = []
    try:
        while not statuses:  # the flood has begun
            time.sleep(0.05)
        until = time.monotonic() + 8  # long enough for a flood to fill the landing queue
        while time.monotonic() < until:
            started = time.perf_counter()
            result = exporter.export(honest)
            latencies.append(time.perf_counter() - started)
            assert result is SpanExportResult.SUCCESS
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in flood:
            thread.join(120)
        exporter.shutdown()
    assert max(latencies) < 5.0, latencies
    assert set(statuses) == {200}  # each hostile request is answered: its span rejected
    health: dict[str, Any] = httpx.get(f"{run.url}/health", timeout=60).json()
    assert health["status"] == "ok"
    # nobody was told to come back later: the flood never filled the landing queue
    assert "queue_full" not in health["requests_rejected"], health["requests_rejected"]
