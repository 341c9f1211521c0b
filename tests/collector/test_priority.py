"""Landing runs below receiving: the writer thread and DuckDB's workers, nothing else."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from comptroller.collector import Collector
from comptroller.collector._priority import at_lower_priority, lower_thread_priority

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _thread_nices() -> dict[int, int]:
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited between the listing and the read
        fields = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = int(fields[16])  # field 19 of stat: nice
    return out


def test_only_the_calling_thread_is_lowered() -> None:
    base = _nice(threading.get_native_id())
    seen: dict[str, int] = {}

    def worker() -> None:
        assert lower_thread_priority(5)
        seen["worker"] = _nice(threading.get_native_id())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["worker"] == min(19, base + 5)
    assert _nice(threading.get_native_id()) == base
    assert not lower_thread_priority(0)


def test_threads_started_at_lower_priority_inherit_it() -> None:
    base = _nice(threading.get_native_id())
    ready, done = threading.Event(), threading.Event()
    child: dict[str, int] = {}

    def start_child() -> threading.Thread:
        def child_body() -> None:
            child["nice"] = _nice(threading.get_native_id())
            ready.set()
            done.wait(10)

        thread = threading.Thread(target=child_body)
        thread.start()
        return thread

    thread = at_lower_priority(start_child, 7)
    ready.wait(10)
    done.set()
    thread.join()
    assert child["nice"] == min(19, base + 7)
    assert _nice(threading.get_native_id()) == base


def test_a_collector_lands_below_the_priority_it_receives_at(tmp_path: Path) -> None:
    base = _nice(threading.get_native_id())
    before = set(_thread_nices())
    collector = Collector(tmp_path / "c.duckdb", landing_nice=10)
    try:
        writer = collector.pipeline._thread.native_id
        assert writer is not None
        for _ in range(200):  # the writer lowers itself as it starts
            if _nice(writer) != base:
                break
            threading.Event().wait(0.01)
        assert _nice(writer) == min(19, base + 10)
        new = {tid: nice for tid, nice in _thread_nices().items() if tid not in before}
        lowered = [tid for tid, nice in new.items() if nice == min(19, base + 10)]
        # The writer and DuckDB's worker threads (it runs queries on the caller's thread
        # plus threads - 1 workers); the caller keeps its priority.
        threads = collector.con.execute("select current_setting('threads')").fetchall()[0][0]
        assert len(lowered) >= 1 + (int(threads) - 1), new
        assert _nice(threading.get_native_id()) == base
    finally:
        collector.close()
