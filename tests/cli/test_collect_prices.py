"""`comptroller collect` prices third-party GenAI spans with the configured fallback prices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind


def test_collector_prices_a_model_unknown_to_genai_prices_from_the_fallback_registry(
    tmp_path: Path,
) -> None:
    db = tmp_path / "collector.duckdb"
    prices = {"ollama:llama3-local": {"input_mtok": "1.5", "output_mtok": "4"}}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comptroller",
            "collect",
            "--db",
            str(db),
            "--port",
            "0",
            "--no-grpc",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COMPTROLLER_CONTROL_PRICES": json.dumps(prices)},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "http://" in line, line
        base = line.split("on ", 1)[1].split(",")[0].strip()
        provider = TracerProvider(resource=Resource.create({"service.name": "local-llm-app"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
        )
        tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2")
        with tracer.start_as_current_span("chat llama3-local", kind=SpanKind.CLIENT) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": "ollama",
                    "gen_ai.request.model": "llama3-local",
                    "gen_ai.usage.input_tokens": 1000,
                    "gen_ai.usage.output_tokens": 500,
                }
            )
        provider.shutdown()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "select request_model, cost_usd, price_source, source from llm_usage"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 1
    model, cost, source, origin = rows[0]
    assert model == "llama3-local"
    assert cost == Decimal("0.0035")  # 1000 × 1.5/M + 500 × 4/M
    assert source == "fallback"
    assert origin.startswith("derived:")
