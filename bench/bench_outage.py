"""What a call costs while the OTLP collector is up, refusing connections, or hung.

Usage rows go to a durable spool when the collector is down; the caller must not wait for
that. Each case runs N sync `invoke`s through a control plane whose chat model is
`FakeChatModel` (no network but the telemetry), with the in-memory guard.

    uv run python bench/bench_outage.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from comptroller.config import load_settings
from comptroller.control import ControlPlane, MemoryGuard, ModelRef, ResolvedProfile, StaticProfiles
from comptroller.control._otlp import OtlpSink
from comptroller.control._telemetry import NullSink, TelemetrySink
from comptroller.control.testing import FakeChatModel


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _plane(sink: TelemetrySink) -> ControlPlane:
    fake = FakeChatModel(responses={"reasoning": "ok"})
    profile = ResolvedProfile(
        purpose="reasoning", model=ModelRef(provider="openai", model="gpt-4o-mini")
    )
    return ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": profile}),
        guard=MemoryGuard(),
        sink=sink,
        providers={"openai": fake.factory},
    )


def _run(name: str, sink: TelemetrySink, calls: int) -> None:
    plane = _plane(sink)
    model = plane.chat_model("reasoning")
    for _ in range(300):  # warm-up
        model.invoke("w")
    took = []
    for i in range(calls):
        t0 = time.perf_counter()
        model.invoke(f"q{i}")
        took.append(time.perf_counter() - t0)
    took.sort()
    p50, p99 = took[calls // 2] * 1e6, took[int(calls * 0.99)] * 1e6
    print(f"{name:28s} p50 {p50:7.0f} µs  p99 {p99:7.0f} µs")
    # A hung collector makes shutdown wait for its timeout: do not wait for it here.
    threading.Thread(target=plane.shutdown, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    spool = Path(tempfile.mkdtemp())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    refused_port = probe.getsockname()[1]
    probe.close()
    hung = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    _run("no sink (baseline)", NullSink(), args.calls)
    _run(
        "otlp, collector up",
        OtlpSink(f"http://127.0.0.1:{server.server_address[1]}", spool / "up"),
        args.calls,
    )
    _run(
        "otlp, connection refused",
        OtlpSink(f"http://127.0.0.1:{refused_port}", spool / "refused"),
        args.calls,
    )
    _run(
        "otlp, collector hung",
        OtlpSink(f"http://127.0.0.1:{hung.getsockname()[1]}", spool / "hung"),
        args.calls,
    )


if __name__ == "__main__":
    main()
