"""Collector ingest benchmark: where the time goes, sustained spans/s, RSS, p99 latency.

    uv run python bench/bench_ingest.py [--seconds 10] [--dialect openai_v2|comptroller]

1. Split, in-process, over pre-encoded requests of 512 GenAI spans: the native decoder
   (protobuf bytes -> Arrow, incl. derived rows and pricing: what the collector runs), and the
   reference path it falls back to: decode (upb protobuf), normalise (incl. pricing); price
   alone; append (DuckDB landing incl. derived-usage settlement and the daily rollup).
   Then a log export of 512 usage records (what a control plane sends over OTLP), both paths.
2. Sustained: a `comptroller collect` subprocess on an ephemeral port, fed by
   bench/otlp_load.py in a separate process over 16 keep-alive connections (a fleet of SDK
   batch processors, each waiting for its ack); spans/s acknowledged (in the ingest log),
   spans/s landed (until the queue has drained), the collector's peak RSS (VmHWM), and rows
   actually in the file.
3. Latency below saturation: the same generator paced at half the landed rate; p99.
4. End to end with the real SDK: TracerProvider + BatchSpanProcessor + OTLPSpanExporter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from otlp_load import MARK, build_request  # noqa: E402


def split(dialect: str, requests: int = 81, pod_resource: bool = False) -> dict[str, float]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from comptroller.analytics import connect
    from comptroller.collector import Lander, Normaliser
    from comptroller.collector._native import NativeDecoder, available
    from comptroller.collector._service import ROW_GROUP_SIZE
    from comptroller.pricing import Usage

    template = build_request(512, dialect, pod_resource=pod_resource)
    bodies = [template.replace(MARK, i.to_bytes(4, "big")) for i in range(requests)]
    spans = 512 * requests
    t0 = time.perf_counter()
    messages = [ExportTraceServiceRequest.FromString(b) for b in bodies]
    t1 = time.perf_counter()
    normaliser = Normaliser()
    normaliser.traces(messages[0])  # warm the price cache
    t2 = time.perf_counter()
    batches = [normaliser.traces(m) for m in messages]
    t3 = time.perf_counter()
    native_us: float | None = None
    if available():
        native = NativeDecoder(normaliser)
        tn = time.perf_counter()
        native_batches = [native.traces(b) for b in bodies]
        native_us = round((time.perf_counter() - tn) / spans * 1e6, 2)
        if all(not isinstance(b, str) for b in native_batches):
            batches = native_batches  # type: ignore[assignment]
    t3b = time.perf_counter()
    prices = normaliser.prices
    at = datetime.now(UTC)
    for _ in range(spans):
        prices.price(
            "openai",
            "gpt-4o",
            Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=32),
            at,
        )
    t4 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # The database and the lander as the collector sets them up.
        con = connect(Path(tmp) / "split.duckdb", row_group_size=ROW_GROUP_SIZE)
        con.execute("SET memory_limit = '128MB'").fetchall()
        con.execute("SET checkpoint_threshold = '128MB'").fetchall()
        con.execute("SET max_vacuum_tasks = 0").fetchall()
        lander = Lander(con, budget_events_every_s=1.0)
        lander.land(batches[:1])
        lander.timings = dict.fromkeys(lander.timings, 0.0)
        t5 = time.perf_counter()
        # 16 requests (8,192 spans) per transaction: the writer's group commit under load
        # lands 16-24 (the sustained run's `spans_per_flush`).
        for i in range(1, requests, 16):
            lander.land(batches[i : i + 16])
        t6 = time.perf_counter()
        phases = {k: round(v / (512 * (requests - 1)) * 1e6, 2) for k, v in lander.timings.items()}
        con.close()
    landed = 512 * (requests - 1)
    return {
        "native_us_per_span (decode+normalise+price)": native_us,
        "reference_decode_us_per_span": round((t1 - t0) / spans * 1e6, 2),
        "reference_normalise_us_per_span (incl. price)": round((t3 - t2) / spans * 1e6, 2),
        "price_us_per_span": round((t4 - t3b) / spans * 1e6, 2),
        "append_us_per_span": round((t6 - t5) / landed * 1e6, 2),
        "append_phases_us_per_span": phases,
    }


def usage_split(records: int = 512, requests: int = 20) -> dict[str, float | None]:
    """µs a usage record (the control plane's log export): native and reference paths."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    from comptroller import semconv as sc
    from comptroller.collector import Normaliser
    from comptroller.collector._decode import decode
    from comptroller.collector._native import NativeDecoder, available

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("comptroller.control")
    for i in range(records):
        logger.emit(
            event_name=sc.EVENT_USAGE,
            attributes={
                sc.USAGE_ID: f"u-{i}",
                sc.GEN_AI_PROVIDER_NAME: "openai",
                sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
                sc.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
                sc.GEN_AI_OPERATION_NAME: "chat",
                sc.GEN_AI_USAGE_INPUT_TOKENS: 1200 + i,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: 80,
                sc.TENANT: f"tenant-{i % 7}",
                sc.ORG: "acme",
                sc.CONTEXT: "support",
                sc.PURPOSE: "reasoning",
                sc.COST_USD: f"0.000{i % 10}35",
                sc.PRICE_SOURCE: "genai-prices@0.2.3",
                sc.OUTCOME: "ok",
                sc.BUDGET_CAP_USD: "10",
                sc.ATTEMPT: 1,
                sc.LATENCY_MS: 812.5,
            },
        )
    body = encode_logs(exporter.get_finished_logs()).SerializeToString()
    normaliser = Normaliser()
    t0 = time.perf_counter()
    for _ in range(requests):
        normaliser.logs(decode("logs", "protobuf", body))  # type: ignore[arg-type]
    reference = (time.perf_counter() - t0) / (requests * records) * 1e6
    native: float | None = None
    if available():
        decoder = NativeDecoder(normaliser)
        t1 = time.perf_counter()
        for _ in range(requests):
            decoder.logs(body)
        native = round((time.perf_counter() - t1) / (requests * records) * 1e6, 2)
    return {
        "usage_record_native_us": native,
        "usage_record_reference_us (decode+normalise)": round(reference, 2),
    }


def _start_collector(db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from comptroller.cli import main; main()",
            "collect",
            "--db",
            str(db),
            "--port",
            "0",
            "--no-grpc",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "http://" not in line:
        raise SystemExit(f"collector did not start: {line}{proc.stderr.read()}")
    url = line.split("on ", 1)[1].split(",")[0].strip()
    return proc, url


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(
    url: str,
    seconds: float,
    connections: int,
    dialect: str,
    rate: float | None = None,
    flags: tuple[str, ...] = (),
) -> dict[str, object]:
    cmd = [
        sys.executable,
        str(HERE / "otlp_load.py"),
        "--url",
        url,
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
        "--dialect",
        dialect,
    ]
    if rate:
        cmd += ["--rate", str(rate)]
    cmd += flags
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _drain(url: str, timeout_s: float = 300.0) -> int:
    """Wait until the collector's queue is empty; return the spans it has landed."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{url}/health", timeout=30).json()
        if health["queue"]["rows"] == 0:
            return int(health["rows_landed"].get("spans", 0))
        if time.monotonic() > deadline:
            raise SystemExit(f"the collector did not drain its queue in {timeout_s:.0f} s")
        time.sleep(0.05)


def sustained(seconds: float, dialect: str, flags: tuple[str, ...] = ()) -> dict[str, object]:
    import duckdb
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        proc, url = _start_collector(db)
        try:
            cpu0 = _cpu_s(proc.pid)
            began = time.perf_counter()
            saturated = _load(url, seconds, 16, dialect, flags=flags)
            # Requests are acknowledged once in the ingest log: the sustained rate is what
            # lands, so wait for the queue to drain and count the rows landed.
            landed = _drain(url)
            drained_s = time.perf_counter() - began
            flushes = httpx.get(f"{url}/health", timeout=30).json()["flushes"]
            saturated["spans_per_flush"] = round(landed / max(1, flushes))
            cpu1 = _cpu_s(proc.pid)
            saturated["acknowledged_spans_per_s"] = saturated.pop("spans_per_s")
            saturated["landed_spans_per_s"] = round(landed / drained_s)
            saturated["drained_after_s"] = round(drained_s, 2)
            saturated["collector_cpu_us_per_span"] = round(
                (cpu1 - cpu0) / max(1, saturated["spans"]) * 1e6,
                1,  # type: ignore[arg-type]
            )
            with open("/proc/loadavg") as fh:
                saturated["loadavg_after"] = fh.read().split()[0]
            rate = max(1.0, saturated["landed_spans_per_s"] / 512 * 0.5)  # type: ignore[operator]
            paced = _load(url, seconds, 8, dialect, rate=rate, flags=flags)
            _drain(url)
            rss = _rss_peak_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
        on_disk = sum(f.stat().st_size for f in db.parent.glob(db.name + "*") if f.is_file())
        con = duckdb.connect(str(db), read_only=True)
        spans_rows = con.execute("select count(*) from spans").fetchone()[0]  # type: ignore[index]
        usage_rows = con.execute("select count(*) from llm_usage").fetchone()[0]  # type: ignore[index]
        con.close()
    return {
        "saturated": saturated,
        "paced_half_rate": paced,
        "collector_peak_rss_mb": round(rss, 1),
        "rows_in_db": {"spans": spans_rows, "llm_usage": usage_rows},
        # The file after the collector's closing checkpoint, per span landed (with its
        # usage row): what a day of a fleet costs on disk.
        "file_bytes_per_span": round(on_disk / max(1, spans_rows)),
        "acknowledged_spans": saturated["spans"] + paced["spans"],  # type: ignore[operator]
    }


def sdk_end_to_end(spans: int = 20_000) -> dict[str, object]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start_collector(Path(tmp) / "sdk.duckdb")
        try:
            provider = TracerProvider()
            provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=f"{url}/v1/traces"),
                    max_queue_size=spans,
                    max_export_batch_size=512,
                )
            )
            tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2")
            started = time.perf_counter()
            for i in range(spans):
                with tracer.start_as_current_span(
                    "chat gpt-4o-mini",
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.response.model": "gpt-4o-mini",
                        "gen_ai.usage.input_tokens": 100 + i % 50,
                        "gen_ai.usage.output_tokens": 20,
                        "server.address": "api.openai.com",
                    },
                ):
                    pass
            provider.force_flush(120_000)
            elapsed = time.perf_counter() - started
            provider.shutdown()
        finally:
            proc.terminate()
            proc.wait(60)
    return {"spans": spans, "elapsed_s": round(elapsed, 2), "spans_per_s": round(spans / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--dialect", default="openai_v2", choices=["openai_v2", "comptroller"])
    parser.add_argument("--skip-sdk", action="store_true")
    parser.add_argument(
        "--with-usage",
        action="store_true",
        help="each trace export is followed by a log export of as many usage records "
        "(a comptroller fleet over OTLP: one span and one usage row a call)",
    )
    parser.add_argument(
        "--pod-resource",
        action="store_true",
        help="spans carry a Kubernetes pod's resource (~1 KB of JSON, as real SDKs send) "
        "instead of two attributes",
    )
    args = parser.parse_args()
    flags = tuple(
        flag
        for flag, on in (("--with-usage", args.with_usage), ("--pod-resource", args.pod_resource))
        if on
    )
    report: dict[str, object] = {
        "dialect": args.dialect,
        "split": split(args.dialect, pod_resource=args.pod_resource),
    }
    print(json.dumps(report["split"]), flush=True)
    print(json.dumps(usage_split()), flush=True)
    report["sustained"] = sustained(args.seconds, args.dialect, flags)
    print(json.dumps(report["sustained"]), flush=True)
    if not args.skip_sdk:
        report["sdk_end_to_end"] = sdk_end_to_end()
        print(json.dumps(report["sdk_end_to_end"]), flush=True)


if __name__ == "__main__":
    main()
