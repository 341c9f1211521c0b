"""The collector half of the delivery guarantee: acknowledged means landed, re-sent means once.

A real `comptroller collect` process is SIGKILLed in the middle of an ingest, restarted on the
same file, and everything is re-sent (as the control plane's durable spool does): every
acknowledged usage row is there before the re-send, and every row exactly once after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

from comptroller import semconv as sc
from comptroller.analytics import open_reader

from .helpers import log_records

PB = {"Content-Type": "application/x-protobuf"}


def _start(db: Path, **env: str) -> tuple[subprocess.Popen[str], str, str]:
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
        env={**os.environ, **env},
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "http://" in line, line + proc.stderr.read()
    return proc, line.split("on ", 1)[1].split(",")[0].strip(), line


def _requests(count: int, per: int) -> list[tuple[list[str], bytes]]:
    out = []
    for r in range(count):
        ids = [f"u-{r}-{i}" for i in range(per)]
        events = [
            (
                sc.EVENT_USAGE,
                {
                    sc.USAGE_ID: uid,
                    sc.TENANT: "t",
                    sc.CONTEXT: "c",
                    sc.PURPOSE: "p",
                    sc.GEN_AI_PROVIDER_NAME: "openai",
                    sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
                    sc.GEN_AI_USAGE_INPUT_TOKENS: 10,
                    sc.COST_USD: "0.001",
                },
            )
            for uid in ids
        ]
        out.append((ids, encode_logs(log_records(events)).SerializeToString()))
    return out


def _usage_counts(url: str) -> dict[str, int]:
    reader = open_reader(url=url)
    try:
        table = reader.query("select usage_id, count(*) as n from llm_usage group by 1")
    finally:
        reader.close()
    return {row["usage_id"]: row["n"] for row in table.to_pylist()}


@pytest.mark.slow
def test_sigkill_mid_ingest_loses_no_acknowledged_row_and_resend_lands_once(tmp_path: Path) -> None:
    db = tmp_path / "crash.duckdb"
    batches = _requests(24, 25)
    proc, url, _ = _start(db)
    acked: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def send(item: tuple[list[str], bytes]) -> None:
        ids, body = item
        if killed.is_set():
            return
        try:
            response = httpx.post(f"{url}/v1/logs", content=body, headers=PB, timeout=30)
        except httpx.TransportError:
            return
        if response.status_code == 200:
            with lock:
                acked.extend(ids)
                if len(acked) >= 8 * 25 and not killed.is_set():
                    killed.set()
                    proc.send_signal(signal.SIGKILL)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, batches))
    proc.wait(30)
    assert proc.stderr is not None
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) < 24 * 25  # it really died mid-ingest

    proc, url, _ = _start(db)
    try:
        before = _usage_counts(url)
        assert set(acked) <= set(before), "an acknowledged usage row was lost"
        for _, body in batches:  # the spool re-sends everything it holds
            assert (
                httpx.post(f"{url}/v1/logs", content=body, headers=PB, timeout=30).status_code
                == 200
            )
        after = _usage_counts(url)
        assert len(after) == 24 * 25
        assert set(after.values()) == {1}
        reader = open_reader(url=url)
        try:
            calls = reader.query("select sum(calls) as calls from llm_usage_daily").to_pylist()
        finally:
            reader.close()
        assert calls == [{"calls": 24 * 25}]
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()


def test_sigterm_flushes_what_was_accepted_and_exits_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "term.duckdb"
    batches = _requests(5, 20)
    proc, url, _ = _start(db)
    for _, body in batches:
        assert httpx.post(f"{url}/v1/logs", content=body, headers=PB, timeout=30).status_code == 200
    proc.send_signal(signal.SIGTERM)
    # uvicorn ends the process by re-raising SIGTERM once it has shut down gracefully.
    assert proc.wait(30) in (0, -signal.SIGTERM)
    assert proc.stderr is not None
    with proc.stderr:
        assert "Traceback" not in proc.stderr.read()
    reader = open_reader(db=db)
    try:
        assert reader.query("select count(*) as n from llm_usage").to_pylist() == [{"n": 100}]
    finally:
        reader.close()


def test_sigkill_after_the_ack_before_the_landing_replays_from_the_ingest_log(
    tmp_path: Path,
) -> None:
    db = tmp_path / "acked.duckdb"
    # The writer gathers requests for 60 s: acknowledged rows are only in the ingest log.
    proc, url, _ = _start(db, COMPTROLLER_COLLECTOR_LINGER_MS="60000")
    batches = _requests(3, 10)
    for _, body in batches:
        assert httpx.post(f"{url}/v1/logs", content=body, headers=PB, timeout=30).status_code == 200
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.stderr is not None
    proc.stderr.close()
    assert (tmp_path / "acked.duckdb.ingest").is_dir()

    proc, url, banner = _start(db)
    try:
        assert "replayed 3 requests from the ingest log" in banner
        counts = _usage_counts(url)
        assert sorted(counts) == sorted(uid for ids, _ in batches for uid in ids)
        assert set(counts.values()) == {1}
        # A client that never saw the ack re-sends: still once.
        httpx.post(f"{url}/v1/logs", content=batches[0][1], headers=PB, timeout=30)
        assert set(_usage_counts(url).values()) == {1}
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()

    # A clean restart replays nothing: the landed position was committed with the rows.
    proc, url, banner = _start(db)
    try:
        assert "replayed" not in banner
        assert len(_usage_counts(url)) == 30
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()
