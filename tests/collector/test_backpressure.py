"""Bounded memory: a full queue answers 429, a stopping collector 503, both with Retry-After."""

from __future__ import annotations

import functools
import threading
import time

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from .helpers import genai_spans

PB = {"Content-Type": "application/x-protobuf"}
# Generous timeouts: CI machines run other suites beside this one.
_post = functools.partial(httpx.post, timeout=60)
_get = functools.partial(httpx.get, timeout=60)


def _body(n: int) -> bytes:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1,
    }
    return encode_spans(genai_spans([(f"s{i}", attrs) for i in range(n)], "x")).SerializeToString()


def test_full_queue_answers_429_with_retry_after_and_stays_bounded(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running(max_queue_rows=6)
    pipeline = run.collector.pipeline
    results: list[int] = []
    # A stalled disk: the writer cannot land while we hold the lander's lock.
    with pipeline.lander.lock:
        first = threading.Thread(
            target=lambda: results.append(
                _post(run.endpoint("traces"), content=_body(3), headers=PB, timeout=30).status_code
            )
        )
        first.start()
        deadline = time.monotonic() + 10
        while pipeline.queued_rows < 6 and time.monotonic() < deadline:  # 3 spans + 3 derived rows
            time.sleep(0.01)
        assert pipeline.queued_rows == 6
        refused = _post(run.endpoint("traces"), content=_body(1), headers=PB)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert pipeline.queued_rows == 6  # nothing grew
        health = _get(f"{run.url}/health").json()
        assert health["queue"]["rows"] == 6
        assert health["requests_rejected"] == {"queue_full": 1}
    first.join(10)
    assert results == [200]
    assert run.sql("select count(*) as n from spans") == [{"n": 3}]


def test_queue_is_bounded_in_bytes_as_well_as_rows(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running(max_queue_mb=1)
    pipeline = run.collector.pipeline
    attrs = {"gen_ai.operation.name": "chat", "note": "x" * 600_000}  # 0.6 MB in one span
    heavy = encode_spans(genai_spans([("chat", attrs)], "x")).SerializeToString()
    with pipeline.lander.lock:  # nothing lands meanwhile
        assert _post(run.endpoint("traces"), content=heavy, headers=PB).status_code == 200
        assert pipeline.queued_rows == 1  # one row, far below max_queue_rows
        refused = _post(run.endpoint("traces"), content=heavy, headers=PB)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        health = _get(f"{run.url}/health").json()
        assert health["queue"]["rows"] == 1
        assert 600_000 < health["queue"]["bytes"] <= health["queue"]["max_bytes"] == 1 << 20
        assert health["requests_rejected"] == {"queue_full": 1}
    _wait(lambda: pipeline.queued_rows == 0)
    assert _post(run.endpoint("traces"), content=heavy, headers=PB).status_code == 200


def test_stopping_collector_answers_503_with_retry_after(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running()
    run.collector.pipeline.close()
    response = _post(run.endpoint("traces"), content=_body(1), headers=PB)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0


def _wait(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_failed_landing_is_retried_and_loses_nothing_accepted(make_running) -> None:  # type: ignore[no-untyped-def]
    run = make_running()
    lander = run.collector.pipeline.lander
    # A real database failure: the table the spans land in is gone for a while.
    with lander.lock:
        lander.con.execute("ALTER TABLE span_rows RENAME TO span_rows_away").fetchall()
    try:
        accepted = _post(run.endpoint("traces"), content=_body(2), headers=PB)
        assert accepted.status_code == 200  # in the ingest log: acknowledged
        _wait(lambda: _get(f"{run.url}/health").json()["landing_failures"] >= 2)
        health = _get(f"{run.url}/health").json()
        assert health["status"] == "failing"
        assert "landing failed" in health["last_error"]
        assert health["queue"]["rows"] == 4  # 2 spans + 2 derived usage rows, still queued
    finally:
        with lander.lock:
            lander.con.execute("ALTER TABLE span_rows_away RENAME TO span_rows").fetchall()
    assert _post(run.endpoint("traces"), content=_body(1), headers=PB).status_code == 200
    _wait(lambda: _get(f"{run.url}/health").json()["status"] == "ok")
    assert run.sql("select count(*) as n from spans") == [{"n": 3}]
    assert run.sql("select count(*) as n from llm_usage") == [{"n": 3}]


def test_full_disk_under_the_ingest_log_answers_503_and_accepts_again_after(
    make_running,  # type: ignore[no-untyped-def]
) -> None:
    run = make_running()
    log = run.collector.log
    log.advance_to(log.last_seq)  # nothing open: the next append opens a new segment
    log.close()
    # The next segment is /dev/full: the kernel answers ENOSPC to the write.
    segment = log.directory / f"{log.last_seq + 1:020d}.log"
    segment.symlink_to("/dev/full")
    try:
        refused = _post(run.endpoint("traces"), content=_body(1), headers=PB)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) > 0
        assert "No space left on device" in _get(f"{run.url}/health").json()["last_error"]
        assert _get(f"{run.url}/health").json()["requests_rejected"] == {"unavailable": 1}
    finally:
        segment.unlink()
    assert _post(run.endpoint("traces"), content=_body(1), headers=PB).status_code == 200
    assert run.sql("select count(*) as n from spans") == [{"n": 1}]
