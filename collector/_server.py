"""OTLP/HTTP receiver (`/v1/traces`, `/v1/logs`, `/v1/metrics`), health and read API.

Status codes follow the OTLP/HTTP specification: 200 with an `Export*ServiceResponse`
(`partial_success` naming how many spans or records were rejected and why), 400 for a body
that cannot be decoded, 401 without the bearer token, 413 for a body over the limit, 415 for
an unsupported Content-Type or Content-Encoding, 429 when the landing queue is full and 503
when the collector cannot accept (stopping, or its ingest log cannot be written), both with
`Retry-After`, which the SDK exporters honour.
Error bodies are a `google.rpc.Status` in the request's encoding.

CPU work (inflate, decode, normalise) and the append to the ingest log run on a worker
thread so the event loop keeps answering health checks: one for requests under 1 MiB, one for
bigger ones, so that a flood of big requests cannot queue up the SDKs' small exports. A
request is acknowledged once it is in the log, and landing runs on the pipeline's writer
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.ipc
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from comptroller import analytics
from comptroller.collector._decode import (
    DecodeError,
    Encoding,
    Signal,
    content_encoding,
    encode_response,
    gunzip,
)
from comptroller.collector._normalise import Batch
from comptroller.collector._pipeline import QueueFull, Unavailable
from comptroller.collector._service import Collector, QueryNotServed

_MEDIA = {"protobuf": "application/x-protobuf", "json": "application/json"}
_BIG_BODY = 1 << 20
"""A request body over this (1 MiB; the SDK's 512-span batches are ~0.5 MB) is big."""
_BIG_READS = 2
"""Big request bodies read at once; more wait, unread (bounded memory, and event loop time)."""
_GRPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 429: 8, 503: 14}


def _status_response(
    status: int, message: str, encoding: Encoding, retry_after_s: int | None = None
) -> Response:
    body = status_pb2.Status(code=_GRPC_CODES.get(status, 2), message=message)
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return Response(
        encode_response(body, encoding),
        status_code=status,
        media_type=_MEDIA[encoding],
        headers=headers,
    )


def _export_response(signal: Signal, batch: Batch) -> Any:
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


class _TooLarge(Exception):
    """A read API body over its limit."""


class _QuerySlots:
    """How many `/api/query` requests may be running or waiting at once (event loop only)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._taken = 0

    def take(self) -> bool:
        if self._taken >= self.capacity:
            return False
        self._taken += 1
        return True

    def give_back(self) -> None:
        self._taken -= 1


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _json_error(status: int, message: str, *, retry_after_s: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _arrow_answer(collector: Collector, sql: str, params: dict[str, object]) -> bytes:
    # Run and serialise on the query lane: a big answer's encoding stays off the event loop.
    table = collector.query(sql, params)
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def create_app(collector: Collector, *, owns_collector: bool = False) -> Starlette:
    """The ASGI app of a collector.

    Args:
        collector: The core that lands and answers queries.
        owns_collector: Close the collector (flushing the queue) when the app shuts down.
    """
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="comptroller-normalise")
    # Big requests (over _BIG_BODY, or of unknown length) are read _BIG_READS at a time and
    # decoded on a lane of their own: a flood of 15 MB requests then delays an SDK's small
    # export by one big decode (~40 ms: the GIL), not by a queue of them
    # (bench/bench_hostile.py).
    big_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="comptroller-normalise-big")
    big_reads = asyncio.Semaphore(_BIG_READS)
    limit = collector.max_request_bytes
    stats = collector.stats
    pipeline = collector.pipeline

    def accept(signal: Signal, encoding: Encoding, body: bytes, client: str | None) -> Batch:
        # Decode, normalise and log the (inflated) body off the event loop; once this returns
        # the request is durable (in the ingest log) and is acknowledged without waiting for
        # DuckDB.
        if pipeline.saturated():  # the queue filled while this request waited for the worker
            raise pipeline.queue_full()
        message, batch = collector.decode_normalise(signal, encoding, body, client=client)
        collector.accept(signal, message, batch, body if encoding == "protobuf" else None)
        return batch

    async def read_body(request: Request) -> bytes:
        try:
            return await _read_limited(request, limit)
        except _TooLarge:
            raise DecodeError(
                413, f"request body is over the limit of {limit} bytes", "too_large"
            ) from None

    def export(signal: Signal) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            encoding: Encoding = "json"
            try:
                encoding = content_encoding(request.headers.get("content-type"))
                if not collector.authorised(request.headers.get("authorization")):
                    return _status_response(
                        401, "missing or wrong bearer token (Authorization: Bearer …)", encoding
                    )
                pipeline.check_open()
                if pipeline.saturated():
                    raise pipeline.queue_full()
                content_coding = request.headers.get("content-encoding", "identity").lower()
                if content_coding not in ("gzip", "identity", ""):
                    raise DecodeError(
                        415,
                        f"unsupported Content-Encoding {content_coding!r}: send gzip or none",
                        "unsupported_encoding",
                    )
                declared = request.headers.get("content-length", "")
                big = not declared.isdigit() or int(declared) > _BIG_BODY
                if big:
                    async with big_reads:
                        body = await read_body(request)
                else:
                    body = await read_body(request)
                loop = asyncio.get_running_loop()
                client = request.client.host if request.client else None
                if content_coding == "gzip":  # inflated first: its size picks the lane
                    compressed = body
                    body = await loop.run_in_executor(
                        big_lane if big else worker, lambda: gunzip(compressed, max_bytes=limit)
                    )
                batch = await loop.run_in_executor(
                    big_lane if big or len(body) > _BIG_BODY else worker,
                    accept,
                    signal,
                    encoding,
                    body,
                    client,
                )
            except DecodeError as exc:
                stats.count_request_rejected(exc.kind)
                return _status_response(exc.status, exc.reason, encoding)
            except QueueFull as exc:
                stats.count_request_rejected("queue_full")
                return _status_response(429, str(exc), encoding, exc.retry_after_s)
            except Unavailable as exc:
                stats.count_request_rejected("unavailable")
                return _status_response(503, str(exc), encoding, exc.retry_after_s)
            with stats.lock:
                stats.requests_ok += 1
            return Response(
                encode_response(_export_response(signal, batch), encoding),
                media_type=_MEDIA[encoding],
            )

        return handler

    async def health(request: Request) -> Response:
        if not collector.authorised(request.headers.get("authorization")):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        health = {
            **pipeline.health(),
            "ledger": collector.ledger_health(),
            "native_decoder": collector.native_health(),
        }
        if collector.notifier is not None:
            health["alerts"] = collector.notifier.health()
        # Acknowledged requests the ingest log could not replay: an error until restarted
        # on a sound log, whatever the pipeline does now.
        health["ingest_log_damage"] = damage = collector.log.damage_report()
        if damage and health["status"] == "ok":
            health["status"] = "damaged"
        return JSONResponse(health)

    # Reads run on lanes of their own: `/api/query` on a pool of `query_concurrency`
    # threads (a runaway statement holds one until its time limit), budget state on one
    # thread nobody else uses, so that control planes get their answer whatever the
    # analysts run.
    query_pool = ThreadPoolExecutor(
        max_workers=collector.query_concurrency, thread_name_prefix="comptroller-query"
    )
    budget_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="comptroller-budget")
    queries = _QuerySlots(collector.query_concurrency + collector.query_queue)

    async def query(request: Request) -> Response:
        if not collector.authorised(request.headers.get("authorization")):
            return _json_error(401, "missing or wrong bearer token (Authorization: Bearer …)")
        body_limit = collector.query_max_body_bytes
        try:
            raw = await _read_limited(request, body_limit)
        except _TooLarge:
            return _json_error(
                413,
                f"query body is over the limit of {body_limit} bytes "
                "(collector.query_max_body_bytes): send shorter SQL and fewer parameters",
            )
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _json_error(400, f"body must be JSON: {exc}")
        if not isinstance(payload, dict) or not isinstance(payload.get("sql"), str):
            return _json_error(400, 'send {"sql": "...", "params": {...}}')
        params = payload.get("params") or {}
        if not isinstance(params, dict):
            return _json_error(400, "params must be a JSON object")
        if not queries.take():
            return _json_error(
                429,
                f"{queries.capacity} queries are running or waiting "
                "(collector.query_concurrency + collector.query_queue): retry shortly",
                retry_after_s=1,
            )
        loop = asyncio.get_running_loop()
        try:
            body = await loop.run_in_executor(
                query_pool, _arrow_answer, collector, payload["sql"], params
            )
        except analytics.QueryTimeout as exc:
            return _json_error(408, str(exc))
        except analytics.QueryError as exc:
            return _json_error(400, str(exc))
        except QueryNotServed as exc:
            return _json_error(501, str(exc))
        except analytics.ReaderUnavailable as exc:  # the PostgreSQL ledger does not answer
            return _json_error(503, str(exc), retry_after_s=5)
        finally:
            queries.give_back()
        return Response(body, media_type=analytics.ARROW_STREAM)

    async def budget_state(request: Request) -> Response:
        if not collector.authorised(request.headers.get("authorization")):
            return _json_error(401, "missing or wrong bearer token (Authorization: Bearer …)")
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(budget_lane, collector.budget_state)
        except analytics.AnalyticsError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        return Response(orjson.dumps(rows), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            worker.shutdown(wait=True)
            big_lane.shutdown(wait=True)
            query_pool.shutdown(wait=True)
            budget_lane.shutdown(wait=True)
            if owns_collector:
                await asyncio.get_running_loop().run_in_executor(None, collector.close)

    routes = [
        Route("/v1/traces", export("traces"), methods=["POST"]),
        Route("/v1/logs", export("logs"), methods=["POST"]),
        Route("/v1/metrics", export("metrics"), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/api/query", query, methods=["POST"]),
        Route("/api/budget-state", budget_state, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
