"""OTLP/gRPC receiver (port 4317 by default): the same normaliser and pipeline as HTTP.

Failures map onto the OTLP/gRPC codes: INVALID_ARGUMENT for data that cannot be used,
UNAUTHENTICATED without the token, UNAVAILABLE (retryable, the SDK backs off) when the queue
is full or the collector cannot land. Partial success travels in the response message.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import DESCRIPTOR as _LOGS_PROTO
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    DESCRIPTOR as _TRACE_PROTO,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from comptroller.collector._decode import DecodeError
from comptroller.collector._pipeline import QueueFull, Unavailable
from comptroller.collector._service import Collector
from comptroller.errors import ConfigError

_TRACE_SERVICE = _TRACE_PROTO.services_by_name["TraceService"].full_name
_LOGS_SERVICE = _LOGS_PROTO.services_by_name["LogsService"].full_name


class _Receiver:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def ingest(self, signal: str, request: Any, context: grpc.ServicerContext) -> Any:
        """Accept one export: a decoded message, or (traces) the request's protobuf bytes."""
        collector = self.collector
        metadata = dict(context.invocation_metadata())
        if not collector.authorised(_text(metadata.get("authorization"))):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        payload: bytes | None = None
        if isinstance(request, bytes):
            # Trace and log exports arrive undecoded, for the native decoder (_native.py).
            if collector.pipeline.saturated():
                collector.stats.count_request_rejected("queue_full")
                context.abort(grpc.StatusCode.UNAVAILABLE, str(collector.pipeline.queue_full()))
            try:
                message, batch = collector.decode_normalise(
                    signal, "protobuf", request, client=context.peer()
                )
            except DecodeError as exc:
                collector.stats.count_request_rejected(exc.kind)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.reason)
            payload = request
        else:
            message = request
            batch = collector.normalise(signal, request)
        try:
            collector.accept(signal, message, batch, payload)
        except QueueFull as exc:
            collector.stats.count_request_rejected("queue_full")
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except Unavailable as exc:
            collector.stats.count_request_rejected("unavailable")
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        with collector.stats.lock:
            collector.stats.requests_ok += 1
        if signal == "traces":
            response = ExportTraceServiceResponse()
            if batch.rejected:
                response.partial_success.rejected_spans = batch.rejected
                response.partial_success.error_message = batch.message()
            return response
        if signal == "logs":
            logs = ExportLogsServiceResponse()
            if batch.rejected:
                logs.partial_success.rejected_log_records = batch.rejected
                logs.partial_success.error_message = batch.message()
            return logs
        return ExportMetricsServiceResponse()


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _raw(
    receiver: _Receiver, service: str, signal: str, response: Any
) -> grpc.GenericRpcHandler[bytes, Any]:
    """`service`/Export with the request left as bytes (no deserializer): the native decoder
    reads them as they came, as over HTTP, instead of upb building messages first."""

    def export(request: bytes, context: grpc.ServicerContext) -> Any:
        return receiver.ingest(signal, request, context)

    handler = grpc.unary_unary_rpc_method_handler(
        export, response_serializer=response.SerializeToString
    )
    return grpc.method_handlers_generic_handler(service, {"Export": handler})


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: _Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.receiver.ingest("metrics", request, context)


def start_grpc(collector: Collector, host: str, port: int, *, workers: int = 4) -> tuple[Any, int]:
    """Start the OTLP/gRPC server; returns it and the port it bound (for port 0).

    Raises:
        ConfigError: The port cannot be bound.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="comptroller-grpc"),
        options=[
            ("grpc.max_receive_message_length", collector.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    receiver = _Receiver(collector)
    server.add_generic_rpc_handlers(
        (
            _raw(receiver, _TRACE_SERVICE, "traces", ExportTraceServiceResponse),
            _raw(receiver, _LOGS_SERVICE, "logs", ExportLogsServiceResponse),
        )
    )
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)  # type: ignore[no-untyped-call]
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise ConfigError(
            f"cannot listen for OTLP/gRPC on {host}:{port} ({exc}); "
            "pick another --grpc-port or pass --no-grpc"
        ) from exc
    server.start()
    return server, bound
