"""OTLP request bodies -> protobuf messages: protobuf (upb) or JSON, optionally gzip'd.

Every failure raises `DecodeError` with the HTTP status and a reason a client can act on.
OTLP/JSON differs from protobuf's canonical JSON in one way that matters: trace and span ids
are hex strings, not base64; they are converted before parsing.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any, Final, Literal, TypeAlias, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

Encoding: TypeAlias = Literal["protobuf", "json"]
Signal: TypeAlias = Literal["traces", "logs", "metrics"]
M = TypeVar("M", bound=Message)

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"

REQUEST_TYPES: Final[dict[str, type[Message]]] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
_ID_KEYS: Final = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id"})


class DecodeError(Exception):
    """A request body that cannot be decoded; `status` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind
        """Short counter name (`bad_protobuf`, `truncated_gzip`, …)."""


def content_encoding(content_type: str | None) -> Encoding:
    """The OTLP encoding of a Content-Type header; 415 for anything else."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        return "protobuf"
    if media == JSON:
        return "json"
    raise DecodeError(
        415,
        f"unsupported Content-Type {content_type or '(none)'!r}: send {PROTOBUF} or {JSON}",
        "unsupported_media_type",
    )


def gunzip(body: bytes, *, max_bytes: int) -> bytes:
    """Inflate a gzip body, refusing more than `max_bytes` of output and truncated input."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise DecodeError(400, f"invalid gzip body: {exc}", "bad_gzip") from None
    if len(out) > max_bytes:
        raise DecodeError(
            413,
            f"request body inflates to more than {max_bytes} bytes (the limit); "
            "send smaller batches",
            "too_large",
        )
    if not inflater.eof:
        raise DecodeError(400, "truncated gzip body (no end of stream)", "truncated_gzip")
    return out


def decode(
    signal: Signal, encoding: Encoding, body: bytes, *, max_attributes: int | None = None
) -> Message:
    """Parse an OTLP export request of `signal` from `body`.

    Args:
        max_attributes: The normaliser's attribute count limit for this signal's spans or
            records (and resources). OTLP/JSON lists longer than it are cut to one over it
            before the (slow: ~100 ms per 1k attributes) conversion to protobuf: the
            normaliser rejects the span or record by its count either way, so a hostile
            100k attributes cost a cut, not 10 s of parsing.
    """
    cls = REQUEST_TYPES[signal]
    if encoding == "protobuf":
        try:
            return cls.FromString(body)
        except _PbDecodeError as exc:
            raise DecodeError(
                400, f"malformed protobuf {cls.__name__}: {exc}", "bad_protobuf"
            ) from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "invalid UTF-8" if "utf-8" in str(exc).lower() else "malformed JSON"
        raise DecodeError(400, f"{reason}: {exc}", "bad_json") from None
    if not isinstance(data, dict):
        raise DecodeError(400, "OTLP/JSON body must be a JSON object", "bad_json")
    if max_attributes is not None and signal != "metrics":
        _cut_attribute_lists(data, signal, max_attributes + 1)
    try:
        _hex_ids_to_base64(data)
        message = cls()
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, binascii.Error) as exc:
        raise DecodeError(400, f"invalid OTLP/JSON {cls.__name__}: {exc}", "bad_json") from None
    return message


def encode_response(message: Message, encoding: Encoding) -> bytes:
    """Serialise a response message in the request's encoding."""
    if encoding == "protobuf":
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode()


_JSON_PATHS: Final = {
    "traces": (("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans"), ("spans",)),
    "logs": (
        ("resourceLogs", "resource_logs"),
        ("scopeLogs", "scope_logs"),
        ("logRecords", "log_records"),
    ),
}
"""The nesting of an OTLP/JSON request down to its spans or records (camelCase or the
proto's names: the JSON parser accepts both)."""


def _items(node: Any, names: tuple[str, ...]) -> list[Any]:
    out: list[Any] = []
    if isinstance(node, dict):
        for name in names:
            value = node.get(name)
            if isinstance(value, list):
                out.extend(value)
    return out


def _cut(node: Any, keep: int) -> None:
    if isinstance(node, dict):
        attributes = node.get("attributes")
        if isinstance(attributes, list) and len(attributes) > keep:
            del attributes[keep:]


def _cut_attribute_lists(data: dict[str, Any], signal: str, keep: int) -> None:
    """Cut each span's or record's (and resource's) attribute list to `keep` items."""
    resources, scopes, leaves = _JSON_PATHS[signal]
    for outer in _items(data, resources):
        if isinstance(outer, dict):
            _cut(outer.get("resource"), keep)
        for scope in _items(outer, scopes):
            for leaf in _items(scope, leaves):
                _cut(leaf, keep)


def _hex_ids_to_base64(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
            elif isinstance(value, dict | list):
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _hex_ids_to_base64(item)
