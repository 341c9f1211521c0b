"""OTLP/HTTP load generator: replays pre-encoded export requests over keep-alive connections.

Each request is an `ExportTraceServiceRequest` of 512 GenAI spans with ~15 realistic
attributes (what the SDK's batch processor sends), encoded ONCE; every replay patches a
4-byte counter into the trace ids (bytes.replace, no re-encoding) so that each request lands
new rows instead of being deduplicated, and the upper 32 bits of every start and end time
(`time.time_ns() >> 32`: a 4.3 s step) so that spans carry the current time, as a live
fleet's do. (Before 2026-11-21 every request of a run had the same 0.5 ms of start times,
so the collector's deduplication, which searches the batch's time range, searched every row
landed so far.) Encoding in the Python SDK costs ~50 µs a span and would measure the
generator, not the collector.

    python bench/otlp_load.py --url http://127.0.0.1:4318 --seconds 10 --connections 4
    python bench/otlp_load.py --url … --rate 40   # paced: requests/s, for latency below saturation

Prints one JSON line: requests, spans, elapsed, spans_per_s, latency percentiles (ms), errors.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import struct
import threading
import time
import urllib.parse

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

MARK = b"\xfe\xedRQ"
MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5")]


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def time_mark(at_ns: int | None = None) -> bytes:
    """The 4 bytes that the template's times share (little-endian upper half of a fixed64)."""
    return struct.pack("<I", (time.time_ns() if at_ns is None else at_ns) >> 32)


def build_request(
    spans: int = 512,
    dialect: str = "openai_v2",
    seed: int = 1,
    *,
    at_ns: int | None = None,
    pod_resource: bool = False,
) -> bytes:
    """One encoded export request of `spans` GenAI spans; trace ids end with MARK.

    Every start and end time has the upper 32 bits of `at_ns` (default: now), so that
    `body.replace(time_mark(at_ns), time_mark())` moves all of them to the current 4.3 s.
    """
    body = _build(spans, dialect, seed, at_ns, pod_resource)
    mark = time_mark(at_ns)
    if body.count(mark) != 2 * spans:  # the pattern also in a random id: pick other ids
        return build_request(spans, dialect, seed + 1, at_ns=at_ns, pod_resource=pod_resource)
    return body


POD_RESOURCE: dict[str, object] = {
    "service.name": "support-agent",
    "service.version": "2026.11.3",
    "service.namespace": "assistants",
    "service.instance.id": "8f0c2d1e-5b7a-4c3e-9d41-2a6f0e7b9c12",
    "deployment.environment.name": "production",
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": "1.38.0",
    "telemetry.auto.version": "0.59b0",
    "process.pid": 7,
    "process.executable.name": "python3.12",
    "process.executable.path": "/usr/local/bin/python3.12",
    "process.command": "/app/.venv/bin/gunicorn",
    "process.runtime.name": "cpython",
    "process.runtime.version": "3.12.7",
    "process.runtime.description": "3.12.7 (main, Oct 19 2026, 04:14:06) [GCC 12.2.0]",
    "host.name": "support-agent-7c9f6d5b8-x2k4p",
    "host.arch": "amd64",
    "os.type": "linux",
    "os.description": "Linux 6.1.0-26-cloud-amd64",
    "k8s.namespace.name": "assistants",
    "k8s.pod.name": "support-agent-7c9f6d5b8-x2k4p",
    "k8s.pod.uid": "1b3e9a7c-0f2d-4e8b-a6c5-93d7e1f0b2a4",
    "k8s.node.name": "gke-prod-pool-2-9e1f3c7a-qz8m",
    "k8s.deployment.name": "support-agent",
    "k8s.replicaset.name": "support-agent-7c9f6d5b8",
    "container.name": "app",
    "container.id": "4f7d2c9e1b3a5f8d0c6e2b9a7d4f1c3e5b8a0d2f6c9e1b4a7d3f5c8e0b2a6d9f",
    "cloud.provider": "gcp",
    "cloud.region": "europe-west1",
    "cloud.availability_zone": "europe-west1-b",
}
"""A Kubernetes pod's resource as the SDK's detectors and the OTel operator set it (~1 KB of
JSON): `--pod-resource` sends it instead of the two-attribute default."""


def _build(
    spans: int, dialect: str, seed: int, at_ns: int | None, pod_resource: bool = False
) -> bytes:
    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    resource = (
        POD_RESOURCE
        if pod_resource
        else {"service.name": "bench-app", "telemetry.sdk.language": "python"}
    )
    rs.resource.attributes.extend([_kv(k, v) for k, v in resource.items()])
    ss = rs.scope_spans.add()
    ss.scope.name = (
        "comptroller.control"
        if dialect == "comptroller"
        else "opentelemetry.instrumentation.openai_v2"
    )
    # The low 32 bits start at 0: start and end (+850 ms) stay within one 4.3 s step.
    now = ((time.time_ns() if at_ns is None else at_ns) >> 32) << 32
    for i in range(spans):
        provider, model = MODELS[i % len(MODELS)]
        span = ss.spans.add()
        span.trace_id = rnd.randbytes(12) + MARK
        span.span_id = rnd.randbytes(8)
        span.name = f"chat {model}"
        span.kind = Span.SPAN_KIND_CLIENT
        span.start_time_unix_nano = now + i * 1000
        span.end_time_unix_nano = now + i * 1000 + 850_000_000
        attrs = [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", provider),
            ("gen_ai.request.model", model),
            ("gen_ai.response.model", model),
            ("gen_ai.response.id", f"chatcmpl-{rnd.getrandbits(64):x}"),
            ("gen_ai.request.max_tokens", 1024),
            ("gen_ai.request.temperature", 0.2),
            ("gen_ai.usage.input_tokens", rnd.randint(50, 4000)),
            ("gen_ai.usage.output_tokens", rnd.randint(5, 800)),
            ("gen_ai.usage.cache_read.input_tokens", rnd.choice([0, 0, 32])),
            ("server.address", "api.openai.com"),
            ("server.port", 443),
        ]
        if dialect == "comptroller":
            attrs += [
                ("comptroller.purpose", "reasoning"),
                ("comptroller.tenant", f"tenant-{i % 7}"),
                ("comptroller.context", "support"),
                ("comptroller.attempt", 1),
            ]
        else:
            attrs += [("gen_ai.openai.response.service_tier", "default"), ("async", False)]
        span.attributes.extend([_kv(k, v) for k, v in attrs])
        span.attributes.append(
            KeyValue(
                key="gen_ai.response.finish_reasons",
                value=AnyValue(array_value={"values": [AnyValue(string_value="stop")]}),
            )
        )
    return req.SerializeToString()


USAGE_MARK = b"QQQQQQQQ"
"""Placeholder in every usage id of `build_usage_request`: replaced by 8 hex digits."""


def build_usage_request(records: int = 512, *, at_ns: int | None = None) -> bytes:
    """One log export of `records` comptroller usage records (what a control plane sends
    beside its spans): usage ids hold USAGE_MARK, times share `time_mark(at_ns)`."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from comptroller import semconv as sc

    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend([_kv("service.name", "bench-app")])
    sl = rl.scope_logs.add()
    sl.scope.name = "comptroller.control"
    base = ((time.time_ns() if at_ns is None else at_ns) >> 32) << 32
    for i in range(records):
        provider, model = MODELS[i % len(MODELS)]
        record = sl.log_records.add()
        record.time_unix_nano = base + i * 1000 + 850_000_000
        record.event_name = sc.EVENT_USAGE
        attrs = [
            (sc.USAGE_ID, f"u-{USAGE_MARK.decode()}-{i}"),
            (sc.GEN_AI_OPERATION_NAME, "chat"),
            (sc.GEN_AI_PROVIDER_NAME, provider),
            (sc.GEN_AI_REQUEST_MODEL, model),
            (sc.GEN_AI_RESPONSE_MODEL, model),
            (sc.GEN_AI_USAGE_INPUT_TOKENS, 1200 + i),
            (sc.GEN_AI_USAGE_OUTPUT_TOKENS, 80),
            (sc.TENANT, f"tenant-{i % 7}"),
            (sc.ORG, "acme"),
            (sc.CONTEXT, "support"),
            (sc.PURPOSE, "reasoning"),
            (sc.COST_USD, f"0.000{i % 10}35"),
            (sc.PRICE_SOURCE, "genai-prices@0.2.3"),
            (sc.OUTCOME, "ok"),
            (sc.BUDGET_CAP_USD, "10"),
            (sc.ATTEMPT, 1),
            (sc.LATENCY_MS, 812.5),
        ]
        record.attributes.extend([_kv(k, v) for k, v in attrs])
    return req.SerializeToString()


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = os.getpid() << 12

    def next(self) -> bytes:
        with self.lock:
            self.value += 1
            return struct.pack(">I", self.value & 0xFFFFFFFF)


def run(
    url: str,
    body: bytes,
    spans: int,
    seconds: float,
    connections: int,
    rate: float | None,
    template_time: bytes,
    usage: bytes | None = None,
) -> dict[str, object]:
    """Replay `body` (built by `build_request` with times marked `template_time`); with
    `usage` (built by `build_usage_request`), each trace export is followed by a log export
    of as many usage records, as a control plane sends them."""
    parts = urllib.parse.urlsplit(url)
    counter = _Counter()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    done = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    interval = connections / rate if rate else 0.0

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        next_at = time.perf_counter() + index * (interval / connections if interval else 0)
        local: list[float] = []
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                break
            if interval:
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += interval
            mark = counter.next()
            now_mark = time_mark()
            payload = body.replace(MARK, mark).replace(template_time, now_mark)
            started = time.perf_counter()
            conn.request("POST", "/v1/traces", payload, {"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            if usage is not None and response.status == 200:
                records = usage.replace(USAGE_MARK, mark.hex().encode()).replace(
                    template_time, now_mark
                )
                while True:  # as an SDK would: the usage records are retried until accepted
                    conn.request(
                        "POST", "/v1/logs", records, {"Content-Type": "application/x-protobuf"}
                    )
                    response = conn.getresponse()
                    response.read()
                    if response.status not in (429, 503) or time.perf_counter() >= stop_at + 30:
                        break
                    with lock:
                        errors["logs_retried"] = errors.get("logs_retried", 0) + 1
                    time.sleep(float(response.getheader("Retry-After") or 1) / 10)
            elapsed = time.perf_counter() - started
            if response.status == 200:
                local.append(elapsed)
            else:
                with lock:
                    errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                if response.status in (429, 503):
                    time.sleep(float(response.getheader("Retry-After") or 1) / 10)
        conn.close()
        with lock:
            latencies.extend(local)
            done[0] += len(local)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "requests": done[0],
        "spans": done[0] * spans,
        "elapsed_s": round(elapsed, 3),
        "spans_per_s": round(done[0] * spans / elapsed),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--rate", type=float, default=None, help="requests/s over all connections")
    parser.add_argument("--dialect", default="openai_v2", choices=["openai_v2", "comptroller"])
    parser.add_argument(
        "--with-usage", action="store_true", help="follow each trace export with its usage records"
    )
    parser.add_argument(
        "--pod-resource",
        action="store_true",
        help="a Kubernetes pod's resource (~1 KB of JSON) instead of two attributes",
    )
    args = parser.parse_args()
    at = time.time_ns()
    body = build_request(args.spans, args.dialect, at_ns=at, pod_resource=args.pod_resource)
    usage = build_usage_request(args.spans, at_ns=at) if args.with_usage else None
    result = run(
        args.url, body, args.spans, args.seconds, args.connections, args.rate, time_mark(at), usage
    )
    result["request_bytes"] = len(body)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
