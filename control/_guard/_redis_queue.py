"""Settlements waiting for Redis, grouped by hash tag, and the timer that flushes them.

An admit carries the queued settlements of its own key only (its script stays in one slot);
the rest wait for their key's next admit, the timer, a full queue or an explicit flush.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from comptroller.control._guard._redis_wire import Settlement

_IDLE_S = 30.0
_log = logging.getLogger("comptroller.control.guard")


class SettleQueue:
    """Settlements not yet in Redis: per tag, oldest first (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_tag: dict[str, list[Settlement]] = {}
        self._n = 0
        self.oldest = 0.0
        """When the queue last went from empty to not empty (monotonic time)."""

    def __len__(self) -> int:
        return self._n

    def add(self, settlement: Settlement, now: float) -> int:
        """Queue `settlement`; returns the queue's length."""
        with self._lock:
            if not self._n:
                self.oldest = now
            self._by_tag.setdefault(settlement.tag, []).append(settlement)
            self._n += 1
            return self._n

    def take(self, tag: str) -> list[Settlement]:
        """Every queued settlement of `tag`, in order."""
        if not self._n:
            return []
        with self._lock:
            taken = self._by_tag.pop(tag, [])
            self._n -= len(taken)
            return taken

    def take_all(self) -> list[Settlement]:
        if not self._n:
            return []
        with self._lock:
            taken = [s for group in self._by_tag.values() for s in group]
            self._by_tag.clear()
            self._n = 0
            return taken

    def requeue(self, taken: list[Settlement], now: float) -> None:
        """Put undelivered settlements back, ahead of those queued since."""
        if not taken:
            return
        with self._lock:
            if not self._n:
                self.oldest = now
            for settlement in reversed(taken):
                self._by_tag.setdefault(settlement.tag, []).insert(0, settlement)
            self._n += len(taken)

    def clear(self) -> None:
        """Forget every queued settlement (what a crash does)."""
        with self._lock:
            self._by_tag.clear()
            self._n = 0


class Flusher:
    """A daemon thread calling `flush_due` every `interval_s`; it ends after a long idle
    spell (the next settlement starts a new one) or at `stop`."""

    def __init__(
        self,
        flush_due: Callable[[], int],
        pending: Callable[[], int],
        interval_s: float,
        where: str,
    ) -> None:
        self._flush_due = flush_due
        self._pending = pending
        self._interval = max(interval_s, 0.001)
        self._where = where
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        """The running thread, None when stopped."""
        self._stop = threading.Event()

    def ensure_running(self) -> None:
        if self.thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self.thread is None:
                self._stop.clear()
                self.thread = threading.Thread(
                    target=self._loop, name="comptroller-settle-flush", daemon=True
                )
                self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        # Real time paces the loop; `flush_due` decides on the guard's clock.
        idle_wakes = 0
        while not self._stop.wait(self._interval):
            try:
                self._flush_due()
            except Exception as exc:  # kept for the next admit or flush
                _log.warning("budget settlements not flushed, state store %s: %s", self._where, exc)
            idle_wakes = 0 if self._pending() else idle_wakes + 1
            if idle_wakes * self._interval >= _IDLE_S:
                with self._lock:
                    if not self._pending():
                        self.thread = None
                        return
                idle_wakes = 0
        with self._lock:
            self.thread = None
