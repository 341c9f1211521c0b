"""Fairness under attack: an honest exporter's latency while a hostile client floods.

A real collector (`tests/usage_db.py` `LiveCollector`) on loopback; one thread sends hostile
OTLP/HTTP requests (`--hostile-mb` MB each, one span holding `--attributes` attributes) back
to back, `--connections` at a time, for `--seconds`; meanwhile the real OTel SDK
`OTLPSpanExporter` exports a small batch of GenAI spans every `--every` seconds and each
export's wall time (until acknowledged) is recorded.

    uv run python bench/bench_hostile.py --seconds 20

Prints one JSON line: honest exports, their latency (max, p50, ms), hostile requests sent and
the statuses they got, and how long each took.

Measured 2026-12-05 on the shared 2-core CI machine, 20 s, 15.1 MB / 100k attributes:
- before the limits (each hostile request decoded by the reference and landed, ~15 MB of
  JSON): the landing queue stayed full, the honest exporter got 429s: 4 of 6 exports failed
  after the SDK's retries (p50 5.06 s, max 5.08 s); 15 hostile requests landed, 3305 got 429.
  `--max-span-attributes 1000000000` (no count limit, today's receiver) still shows the queue
  filling: honest max 4.2 s, 741 of 805 hostile requests answered 429.
- with the limits (a span over 1024 attributes rejected by its count; the native decoder
  declines at its 256th attribute, upb decodes the request in ~40 ms): 2 hostile connections:
  83 honest exports, max 67 ms, p50 24 ms; 8 connections: max 124 ms, p50 18 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace.export import SpanExportResult

from comptroller.collector._normalise import Limits
from tests.collector.helpers import fixture_spans, load_fixture
from tests.usage_db import LiveCollector


def hostile_request(total_bytes: int, attributes: int, seed: int = 0) -> bytes:
    """One trace export of one span holding `attributes` string attributes, ~`total_bytes`."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = seed.to_bytes(16, "big") or b"\1" * 16
    span.span_id = b"\2" * 8
    span.name = "hostile"
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1
    value = "x" * max(total_bytes // attributes - 16, 1)
    span.attributes.extend(
        KeyValue(key=f"a{i}", value=AnyValue(string_value=value)) for i in range(attributes)
    )
    return request.SerializeToString()


def run(
    *,
    seconds: float,
    hostile_mb: float,
    attributes: int,
    connections: int,
    every: float,
    max_span_attributes: int,
) -> dict[str, object]:
    body = hostile_request(int(hostile_mb * 1e6), attributes)
    honest_spans = fixture_spans(load_fixture("openllmetry"))
    with tempfile.TemporaryDirectory() as tmp:
        limits = Limits(max_span_attributes=max_span_attributes)
        live = LiveCollector(Path(tmp) / "bench.duckdb", limits=limits)
        try:
            stop = threading.Event()
            statuses: Counter[str] = Counter()
            hostile_s: list[float] = []
            lock = threading.Lock()

            def hostile() -> None:
                with httpx.Client(timeout=60) as client:
                    while not stop.is_set():
                        start = time.perf_counter()
                        try:
                            status = str(
                                client.post(
                                    f"{live.url}/v1/traces",
                                    content=body,
                                    headers={"Content-Type": "application/x-protobuf"},
                                ).status_code
                            )
                        except httpx.HTTPError as exc:
                            status = type(exc).__name__
                        with lock:
                            statuses[status] += 1
                            hostile_s.append(time.perf_counter() - start)

            threads = [threading.Thread(target=hostile) for _ in range(connections)]
            for thread in threads:
                thread.start()
            exporter = OTLPSpanExporter(endpoint=f"{live.url}/v1/traces", timeout=10)
            latencies: list[float] = []
            failures = 0
            deadline = time.monotonic() + seconds
            time.sleep(min(1.0, seconds / 4))  # let the flood start first
            while time.monotonic() < deadline:
                start = time.perf_counter()
                if exporter.export(honest_spans) is not SpanExportResult.SUCCESS:
                    failures += 1
                latencies.append(time.perf_counter() - start)
                time.sleep(every)
            stop.set()
            for thread in threads:
                thread.join(120)
            exporter.shutdown()
        finally:
            live.stop()
    latencies.sort()
    return {
        "hostile_bytes": len(body),
        "attributes": attributes,
        "connections": connections,
        "max_span_attributes": max_span_attributes,
        "honest_exports": len(latencies),
        "honest_failures": failures,
        "honest_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "honest_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "hostile_requests": sum(statuses.values()),
        "hostile_statuses": dict(statuses),
        "hostile_max_ms": round(max(hostile_s) * 1000, 1) if hostile_s else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hostile-mb", type=float, default=15.0)
    parser.add_argument("--attributes", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument(
        "--max-span-attributes",
        type=int,
        default=Limits().max_span_attributes,
        help="the collector's limit (10**9: as before the limit existed)",
    )
    args = parser.parse_args()
    print(
        json.dumps(
            run(
                seconds=args.seconds,
                hostile_mb=args.hostile_mb,
                attributes=args.attributes,
                connections=args.connections,
                every=args.every,
                max_span_attributes=args.max_span_attributes,
            )
        )
    )


if __name__ == "__main__":
    main()
