"""OTLP/gRPC: the same landing as HTTP, partial success, token, and retryable overload."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from comptroller import semconv as sc
from comptroller.collector._grpc import start_grpc

from .conftest import Running
from .helpers import genai_spans, log_records

CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 100,
}


@pytest.fixture
def channel(running: Running) -> Iterator[grpc.Channel]:
    server, port = start_grpc(running.collector, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(grace=None).wait()


def test_grpc_export_lands_spans_and_usage_rows(running: Running, channel: grpc.Channel) -> None:
    spans = genai_spans(
        [("ok", CHAT), ("bad", dict(CHAT, **{"gen_ai.usage.input_tokens": -1}))], "x"
    )
    response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(encode_spans(spans))  # type: ignore[no-untyped-call]
    assert response.partial_success.rejected_spans == 1
    assert "negative_tokens" in response.partial_success.error_message
    logs = log_records([(sc.EVENT_USAGE, {sc.USAGE_ID: "g-1", sc.GEN_AI_USAGE_INPUT_TOKENS: 5})])
    logs_service_pb2_grpc.LogsServiceStub(channel).Export(encode_logs(logs))  # type: ignore[no-untyped-call]
    assert running.sql("select name from spans") == [{"name": "ok"}]
    assert running.sql("select usage_id, source from llm_usage order by 1") == [
        {"usage_id": "g-1", "source": "comptroller"},
        {
            "usage_id": running.sql("select 'span:' || trace_id || ':' || span_id as u from spans")[
                0
            ]["u"],
            "source": "derived:genai",
        },
    ]


def test_grpc_requires_the_token_when_one_is_set(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running(token="t0k")
    server, port = start_grpc(run.collector, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)  # type: ignore[no-untyped-call]
            request = encode_spans(genai_spans([("s", CHAT)], "x"))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Export(request)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            stub.Export(request, metadata=[("authorization", "Bearer t0k")])
        assert run.sql("select count(*) as n from spans") == [{"n": 1}]
    finally:
        server.stop(grace=None).wait()


def test_grpc_overload_is_unavailable_so_exporters_retry(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running()
    run.collector.pipeline.close()
    server, port = start_grpc(run.collector, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as refused:
                stub.Export(encode_spans(genai_spans([("s", CHAT)], "x")))
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None).wait()


def test_grpc_exports_take_the_native_decoder(running: Running, channel: grpc.Channel) -> None:
    spans = genai_spans([("ok", CHAT)], "x")
    trace_service_pb2_grpc.TraceServiceStub(channel).Export(encode_spans(spans))  # type: ignore[no-untyped-call]
    logs = log_records([(sc.EVENT_USAGE, {sc.USAGE_ID: "g-2", sc.GEN_AI_USAGE_INPUT_TOKENS: 5})])
    logs_service_pb2_grpc.LogsServiceStub(channel).Export(encode_logs(logs))  # type: ignore[no-untyped-call]
    assert running.collector.native is not None
    assert running.collector.native.stats.native == 2
    assert running.sql("select usage_id from llm_usage where source = 'comptroller'") == [
        {"usage_id": "g-2"}
    ]


def test_grpc_malformed_protobuf_is_invalid_argument_with_a_reason(
    running: Running, channel: grpc.Channel
) -> None:
    export = channel.unary_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as refused:
        export(b"\x0a\xff\xff\xff\x0f")  # a length far past the end
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed protobuf" in (refused.value.details() or "")
    spans = genai_spans([("after", CHAT)], "x")
    trace_service_pb2_grpc.TraceServiceStub(channel).Export(encode_spans(spans))  # type: ignore[no-untyped-call]
    assert running.sql("select name from spans") == [{"name": "after"}]
