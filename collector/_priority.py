"""Landing yields the CPU to receiving: the writer and DuckDB's threads run at a lower priority.

On a small machine the receiver (decode, normalise, log, ack) and the writer (DuckDB's
threads) compete for the same cores, and every millisecond the receiver waits is export
latency. Landing can wait: the ingest log has already made the request durable. Linux keeps
a nice value per thread, and a thread inherits its creator's, so the writer thread lowers its
own, and the database is opened from a thread that has lowered its own first: the worker
threads DuckDB starts then inherit it. Nothing else in the process is affected.

Measured (paced at half load, openai-v2 dialect): p99 68.9 ms → 36.9 ms; docs/PERFORMANCE.md.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def lower_thread_priority(nice: int) -> bool:
    """Add `nice` to the calling thread's nice value (Linux; elsewhere a no-op).

    Returns:
        Whether the priority was lowered.
    """
    if nice <= 0 or sys.platform != "linux":
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError:
        return False  # e.g. a sandbox without setpriority: landing just competes as before
    return True


def at_lower_priority(fn: Callable[[], T], nice: int) -> T:
    """Run `fn` in a fresh thread whose priority is lowered by `nice`; return its result.

    Threads that `fn` starts (DuckDB's workers, when it opens a database) inherit that
    priority; the calling thread keeps its own.
    """
    if nice <= 0 or sys.platform != "linux":
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        lower_thread_priority(nice)
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=run, name="comptroller-open-db")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
