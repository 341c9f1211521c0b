"""The bounded queue between receivers and the single DuckDB writer, with group commit.

Receivers (HTTP, gRPC) normalise a request, `submit` its batch and wait for the returned
future: it resolves only after the transaction holding the batch has committed, so an
acknowledged request is durable — a crash loses nothing that was acknowledged. The writer
thread lands everything queued while the previous transaction ran in one transaction (group
commit), which amortises DuckDB's per-statement cost over many requests.

The queue is bounded in rows: a batch that does not fit raises `QueueFull` (HTTP 429 /
gRPC UNAVAILABLE with a retry delay) instead of growing memory.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from comptroller.collector._land import Lander, LandResult
from comptroller.collector._normalise import Batch
from comptroller.errors import ComptrollerError


class CollectorError(ComptrollerError):
    """Base of the collector's errors::

    CollectorError
    ├── QueueFull        the landing queue is full: retry after `retry_after_s` (429)
    └── Unavailable      the collector cannot land now (stopping, or DuckDB failing) (503)
    """


class QueueFull(CollectorError):
    """The landing queue is full; the client should retry after `retry_after_s`."""

    def __init__(self, queued: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"landing queue full ({queued} of {limit} rows); retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class Unavailable(CollectorError):
    """The collector cannot land data now (shutting down, or the database is failing)."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(kw_only=True)
class Stats:
    """Counters the health endpoint reports (updated under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    rows_landed: dict[str, int] = field(default_factory=dict)
    derived_usage_rows: int = 0
    superseded_usage_rows: int = 0
    rows_rejected: dict[str, int] = field(default_factory=dict)
    requests_rejected: dict[str, int] = field(default_factory=dict)
    requests_ok: int = 0
    unauthorized: int = 0
    flushes: int = 0
    last_flush: dt.datetime | None = None
    last_flush_ms: float | None = None
    last_error: str | None = None
    metric_points_dropped: int = 0

    def count_request_rejected(self, kind: str) -> None:
        """Count one request refused as a whole (`kind`: bad_protobuf, too_large, …)."""
        with self.lock:
            self.requests_rejected[kind] = self.requests_rejected.get(kind, 0) + 1

    def count_rows_rejected(self, reasons: dict[str, int]) -> None:
        """Count spans or records rejected inside accepted requests, by reason."""
        if not reasons:
            return
        with self.lock:
            for reason, count in reasons.items():
                self.rows_rejected[reason] = self.rows_rejected.get(reason, 0) + count

    def count_unauthorized(self) -> None:
        """Count one request refused for a missing or wrong bearer token."""
        with self.lock:
            self.unauthorized += 1


class Pipeline:
    """A bounded queue of batches and the writer thread that lands them.

    Args:
        lander: Lands merged batches into DuckDB.
        max_queue_rows: Rows that may wait for landing; beyond, `submit` raises `QueueFull`.
        max_flush_rows: Most rows landed in one transaction.
        linger_s: How long the writer waits for more batches when few are queued: bigger
            transactions cost DuckDB (and the rollup) much less per row.
    """

    def __init__(
        self,
        lander: Lander,
        *,
        max_queue_rows: int = 50_000,
        max_flush_rows: int = 65_536,
        linger_s: float = 0.005,
        stats: Stats | None = None,
    ) -> None:
        self.lander = lander
        self.linger_s = linger_s
        self.max_queue_rows = max_queue_rows
        self.max_flush_rows = max_flush_rows
        self.stats = stats or Stats()
        self._queue: deque[tuple[Batch, Future[LandResult]]] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="comptroller-lander", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        """Rows waiting to be landed."""
        return self._queued_rows

    @property
    def queued_batches(self) -> int:
        """Batches (requests) waiting to be landed."""
        return len(self._queue)

    def saturated(self) -> bool:
        """True when the queue is full (receivers answer 429 before reading a body)."""
        return self._queued_rows >= self.max_queue_rows

    def check_open(self) -> None:
        """Raise `Unavailable` when the pipeline no longer accepts batches."""
        if self._closing:
            raise Unavailable("collector is shutting down; retry against its replacement")

    def submit(self, batch: Batch) -> Future[LandResult]:
        """Queue `batch`; the future resolves once it has committed.

        Raises:
            QueueFull: The queue cannot take the batch's rows now.
            Unavailable: The pipeline is closing.
        """
        future: Future[LandResult] = Future()
        rows = batch.rows
        if rows == 0:
            future.set_result(LandResult())
            return future
        with self._cond:
            self.check_open()
            if self._queued_rows and self._queued_rows + rows > self.max_queue_rows:
                raise QueueFull(self._queued_rows, self.max_queue_rows, retry_after_s=1)
            self._queue.append((batch, future))
            self._queued_rows += rows
            self._cond.notify()
        return future

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, land everything queued, then stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _take(self) -> list[tuple[Batch, Future[LandResult]]]:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self.linger_s and not self._closing and self._queued_rows < self.max_flush_rows // 4:
                self._cond.wait(self.linger_s)
            items: list[tuple[Batch, Future[LandResult]]] = []
            rows = 0
            while self._queue and (
                not items or rows + self._queue[0][0].rows <= self.max_flush_rows
            ):
                item = self._queue.popleft()
                rows += item[0].rows
                items.append(item)
            return items

    def _run(self) -> None:
        while True:
            items = self._take()
            if not items:
                return  # closing and drained
            started = time.perf_counter()
            rows = sum(batch.rows for batch, _ in items)
            try:
                result = self.lander.land([batch for batch, _ in items])
            except Exception as exc:  # a failed landing is reported, the writer lives on
                message = f"landing failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                with self.stats.lock:
                    self.stats.last_error = message
                self._failing = True
                with self._cond:
                    self._queued_rows -= rows
                for _, future in items:
                    future.set_exception(Unavailable(message))
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._failing = False
            with self._cond:
                self._queued_rows -= rows
            self._record(result, elapsed_ms)
            for _, future in items:
                future.set_result(result)

    def _record(self, result: LandResult, elapsed_ms: float) -> None:
        stats = self.stats
        with stats.lock:
            for table, count in result.inserted.items():
                stats.rows_landed[table] = stats.rows_landed.get(table, 0) + count
            if result.derived:
                stats.rows_landed["llm_usage"] = (
                    stats.rows_landed.get("llm_usage", 0) + result.derived
                )
            stats.derived_usage_rows += result.derived
            stats.superseded_usage_rows += result.superseded
            stats.flushes += 1
            stats.last_flush = dt.datetime.now(dt.UTC)
            stats.last_flush_ms = round(elapsed_ms, 3)

    def health(self) -> dict[str, Any]:
        """What `/health` reports."""
        stats = self.stats
        with stats.lock:
            return {
                "status": "failing" if self._failing else ("stopping" if self._closing else "ok"),
                "queue": {
                    "rows": self._queued_rows,
                    "requests": len(self._queue),
                    "max_rows": self.max_queue_rows,
                },
                "rows_landed": dict(stats.rows_landed),
                "derived_usage_rows": stats.derived_usage_rows,
                "superseded_usage_rows": stats.superseded_usage_rows,
                "rows_rejected": dict(stats.rows_rejected),
                "requests_rejected": dict(stats.requests_rejected),
                "requests_ok": stats.requests_ok,
                "unauthorized": stats.unauthorized,
                "metric_points_dropped": stats.metric_points_dropped,
                "flushes": stats.flushes,
                "last_flush": stats.last_flush.isoformat() if stats.last_flush else None,
                "last_flush_ms": stats.last_flush_ms,
                "last_error": stats.last_error,
            }
