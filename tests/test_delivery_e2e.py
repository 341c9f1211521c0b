"""The delivery guarantee, end to end: every usage row reaches the collector exactly once.

A control plane with `telemetry = "otlp"` sends to a real `comptroller collect` process (its own
DuckDB file, an ephemeral port) while it drives calls through `ChatOpenAI` over HTTP to the
local fake OpenAI server. In the middle the collector is SIGKILLed; calls go on while it is
down (their usage rows go to the durable spool; the calls do not wait for delivery); it is
restarted on the same file and port; the spool re-sends, the collector deduplicates on the
usage id. Afterwards the DuckDB file holds one row per priced attempt the plane made, no
duplicate, and the same total cost as the plane's own budget ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from comptroller.analytics import open_reader
from comptroller.config import load_settings
from comptroller.control import (
    BudgetSpec,
    ControlPlane,
    GuardKey,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    StaticProfiles,
)
from comptroller.control._otlp import OtlpSink
from comptroller.control.testing import FakeOpenAIServer, ModelBehaviour

MODEL = "gpt-4o-mini-2024-07-18"
KEY = GuardKey("acme", "billing", "reasoning")
PHASE = 100  # calls before the kill, while the collector is down, after the restart
CONCURRENCY = 8
SAMPLE = 25  # calls of each phase timed one at a time


class CollectorProcess:
    """A `comptroller collect` subprocess on one DuckDB file, killable and restartable."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.stderr: list[str] = []
        self._readers: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from comptroller.cli import main; main()",
                "collect",
                "--db",
                str(self.db),
                "--port",
                str(self.port),
                "--no-grpc",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "http://" in line, line + proc.stderr.read()
        self.port = int(line.split("on http://", 1)[1].split(",")[0].rsplit(":", 1)[1])
        self.proc = proc
        # Keep reading stderr so that a chatty collector never blocks on a full pipe.
        reader = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        reader.start()
        self._readers.append(reader)

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            self.stderr.extend(proc.stderr)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        for reader in self._readers:
            reader.join(10)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    running = CollectorProcess(tmp_path / "collector.duckdb")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(ModelBehaviour(content="ok", prompt_tokens=12, completion_tokens=3)) as s:
        yield s


def _query(url: str, sql: str) -> list[dict[str, object]]:
    reader = open_reader(url=url)
    try:
        rows: list[dict[str, object]] = reader.query(sql).to_pylist()
        return rows
    finally:
        reader.close()


async def _until(condition: object, what: str, timeout_s: float = 10.0) -> None:
    """Await a condition the background export threads bring about (bounded)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_collector_killed_mid_run_still_lands_every_usage_row_exactly_once(
    collector: CollectorProcess, server: FakeOpenAIServer
) -> None:
    settings = load_settings(telemetry="otlp", otlp_endpoint=collector.url)
    profile = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model=MODEL),
        base_url=server.base_url,
        budget=BudgetSpec(daily_usd=Decimal("1000")),
    )
    guard = MemoryGuard()
    plane = ControlPlane(settings, resolver=StaticProfiles({"reasoning": profile}), guard=guard)
    sink = plane.telemetry.sink
    assert isinstance(sink, OtlpSink)
    spool = sink.logs
    spool.retry_max_s = 1.0  # a backoff ceiling that keeps the test short (default 30 s)
    model = plane.chat_model("reasoning", domain="acme", context="billing")
    before = server.request_count(MODEL)

    async def calls(start: int) -> list[float]:
        """PHASE calls: SAMPLE one at a time, timed (seconds), then the rest CONCURRENCY at
        a time."""
        latencies: list[float] = []
        for i in range(SAMPLE):
            t0 = time.perf_counter()
            answer = await model.ainvoke(f"q{start + i}")
            latencies.append(time.perf_counter() - t0)
            assert answer.content == "ok"
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                assert (await model.ainvoke(f"q{i}")).content == "ok"

        await asyncio.gather(*(one(start + i) for i in range(SAMPLE, PHASE)))
        return latencies

    try:
        up = await calls(0)
        await _until(lambda: spool.sent_batches >= 1, "a first delivery to the collector")
        landed_before_kill = _query(collector.url, "select count(*) as n from llm_usage")[0]["n"]

        collector.kill()
        down = await calls(PHASE)
        await _until(lambda: spool.spooled_batches >= 1, "a batch spooled during the outage")
        assert spool.pending() >= 1

        collector.start()  # same file, same port
        # No call, no flush: the background re-sender delivers the spool by itself.
        assert await asyncio.to_thread(spool.wait_empty, 10.0), f"{spool.pending()} spooled"
        after = await calls(2 * PHASE)
    finally:
        plane.shutdown()

    assert isinstance(landed_before_kill, int)
    assert 0 < landed_before_kill <= PHASE  # killed mid-run, with rows already landed
    assert spool.pending() == 0
    attempts = server.request_count(MODEL) - before
    assert attempts == 3 * PHASE  # every call priced once, no retries
    spent = guard.ledger(KEY).spent_usd
    assert spent > 0
    (usage,) = _query(
        collector.url,
        "select count(*) as n, count(distinct usage_id) as ids, sum(cost_usd) as cost, "
        "count(*) filter (where cost_usd is null) as unpriced from llm_usage",
    )
    assert usage == {"n": attempts, "ids": attempts, "cost": spent, "unpriced": 0}
    (daily,) = _query(
        collector.url, "select sum(calls) as calls, sum(cost_usd) as cost from llm_usage_daily"
    )
    assert daily == {"calls": attempts, "cost": spent}

    # Every phase completed its calls, the outage included: the caller never waited for the
    # dead collector. (How much a call costs during an outage is a benchmark figure, not a
    # test threshold: see docs/PERFORMANCE.md.)
    assert len(up) == len(down) == len(after) == SAMPLE
    collector.stop()
    assert "Traceback" not in "".join(collector.stderr)
