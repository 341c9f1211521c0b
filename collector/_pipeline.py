"""The bounded queue between receivers and the ledger's single writer, with group commit.

Receivers normalise a request, then `submit` it: the request goes to the ingest log on disk
and its batch to the queue, and the receiver answers the client at once. An acknowledged
request is therefore durable before it is landed — a crash loses nothing that was
acknowledged, and replay on start lands what the crash left in the log. The writer thread
lands everything queued while the previous transaction ran in one transaction (group
commit), which amortises DuckDB's per-statement cost over many requests, and commits the
sequence number of the last request it holds with the rows (into a PostgreSQL ledger, the
sequence number of each request: `positions`, what its exactly-once landing keys on).

A row the database refuses (a value out of its column's range that validation missed) is
quarantined into `rejected_records` and the rest lands (`Lander.land_safely`). A landing that
fails otherwise (the database refusing writes, a full disk) is retried, with backoff,
until it succeeds: the batches stay queued, `/health` says "failing" with the error, and the
queue fills until receivers answer 429. Nothing accepted is dropped.

The queue is bounded in rows and in Arrow bytes: a batch that does not fit raises `QueueFull` (HTTP 429 /
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

import pyarrow as pa

from comptroller.collector._ingest_log import IngestLog, IngestLogError
from comptroller.collector._land import LandResult, LedgerLander
from comptroller.collector._normalise import Batch
from comptroller.collector._priority import lower_thread_priority
from comptroller.collector._validate import TARGETS
from comptroller.errors import ComptrollerError

MAX_QUEUE_MB = 64
"""Default bound on the Arrow memory of the batches waiting to land."""
MAX_FLUSH_ROWS = 65_536
"""Most rows landed in one transaction (the writer's default, and replay's)."""
_IDLE_S = 0.25
"""The writer's idle tick: pending budget events are recorded within this of a lull."""


class CollectorError(ComptrollerError):
    """Base of the collector's errors::

    CollectorError
    ├── QueueFull        the landing queue is full: retry after `retry_after_s` (429)
    └── Unavailable      the collector cannot accept now (stopping, ingest log failing) (503)
    """


class QueueFull(CollectorError):
    """The landing queue is full; the client should retry after `retry_after_s`."""

    def __init__(self, queued: int, limit: int, retry_after_s: int, unit: str = "rows") -> None:
        super().__init__(
            f"landing queue full ({queued} of {limit} {unit}); retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class Unavailable(CollectorError):
    """The collector cannot accept data now (shutting down, or the ingest log is failing)."""

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
    landing_failures: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    """Rows put in `rejected_records` instead of landing, by what they were: spans, usage,
    events."""

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

    def count_quarantined(self, records: pa.Table) -> None:
        """Count the rows of a `rejected_records` table by the table they were bound for."""
        targets = records.column("target").to_pylist()
        with self.lock:
            for target in targets:
                kind = TARGETS.get(target or "", "other")
                self.quarantined[kind] = self.quarantined.get(kind, 0) + 1

    def count_unauthorized(self) -> None:
        """Count one request refused for a missing or wrong bearer token."""
        with self.lock:
            self.unauthorized += 1


class Pipeline:
    """A bounded queue of batches, the ingest log behind it, and the writer that lands them.

    Args:
        lander: Lands merged batches (into DuckDB, or a PostgreSQL ledger).
        log: Where accepted requests are written before they are acknowledged.
        max_queue_rows: Rows that may wait for landing; beyond, `submit` raises `QueueFull`.
        max_queue_bytes: Arrow memory of the batches that may wait (a span with a large
            resource or many attributes weighs more than a row count says); beyond,
            `submit` raises `QueueFull` too.
        max_flush_rows: Most rows landed in one transaction.
        linger_s: How long the writer waits for more batches when few are queued: bigger
            transactions cost DuckDB (and the rollup) much less per row.
        retry_s: First delay before a failed landing is retried (doubling up to 5 s).
        nice: How much lower the writer thread runs than the receivers (Linux; 0: same).
    """

    def __init__(
        self,
        lander: LedgerLander,
        log: IngestLog,
        *,
        max_queue_rows: int = 50_000,
        max_queue_bytes: int = MAX_QUEUE_MB << 20,
        max_flush_rows: int = MAX_FLUSH_ROWS,
        linger_s: float = 0.005,
        retry_s: float = 0.05,
        nice: int = 0,
        stats: Stats | None = None,
    ) -> None:
        self.lander = lander
        self.log = log
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.nice = nice
        self.max_queue_rows = max_queue_rows
        self.max_queue_bytes = max_queue_bytes
        self.max_flush_rows = max_flush_rows
        self.stats = stats or Stats()
        self._queue: deque[tuple[Batch, Future[LandResult], int, int]] = deque()
        """(batch, its future, its ingest-log sequence number, its Arrow bytes)."""
        self._queued_rows = 0
        self._queued_bytes = 0
        self._last_rows = 0
        self._last_bytes = 0
        """Rows and bytes of the last request queued: what `saturated` expects the next to
        bring."""
        self._cond = threading.Condition()
        self._closing = False
        self._failing = False
        self.accepted_seq = log.last_seq
        """Sequence number of the newest request accepted (in the log)."""
        self.landed_seq = log.last_seq
        """Sequence number of the newest request landed (committed in the ledger)."""
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
        """True when the queue cannot take a request like the last one.

        Receivers answer 429 before reading the body: decoding a request only for `submit`
        to refuse it cost as much as the ones that were accepted (under saturation about
        half the requests were decoded and normalised for nothing).
        """
        return self._refusal(self._last_rows, self._last_bytes) is not None

    def queue_full(self) -> QueueFull:
        """The error for a request refused because the queue is full (rows or bytes)."""
        return self._refusal(self._last_rows, self._last_bytes) or QueueFull(
            self._queued_rows, self.max_queue_rows, 1
        )

    def _refusal(self, rows: int, size: int) -> QueueFull | None:
        """Why the queue cannot take `rows` more rows of `size` bytes (None: it can).

        An empty queue takes any request, so that one bigger than the bounds still lands.
        """
        if not self._queued_rows:
            return None
        if self._queued_bytes + size > self.max_queue_bytes:
            return QueueFull(self._queued_bytes, self.max_queue_bytes, 1, unit="bytes")
        if self._queued_rows + rows > self.max_queue_rows:
            return QueueFull(self._queued_rows, self.max_queue_rows, 1)
        return None

    def check_open(self) -> None:
        """Raise `Unavailable` when the pipeline no longer accepts batches."""
        if self._closing:
            raise Unavailable("collector is shutting down; retry against its replacement")

    def submit(self, batch: Batch, *, signal: str, payload: bytes) -> Future[LandResult]:
        """Log `payload` (the request, as protobuf bytes) and queue `batch`, its rows.

        Once this returns the request is durable and may be acknowledged; the future
        resolves when its rows have committed (receivers do not wait for it).

        Raises:
            QueueFull: The queue cannot take the batch's rows now.
            Unavailable: The pipeline is closing, or the ingest log cannot be written.
        """
        future: Future[LandResult] = Future()
        rows = batch.rows
        if rows == 0:
            future.set_result(LandResult())
            return future
        size = batch.nbytes
        with self._cond:
            self.check_open()
            refusal = self._refusal(rows, size)
            if refusal is not None:
                raise refusal
            # Appended under the queue's lock: log order is landing order, so the landed
            # sequence number always marks a prefix of the log.
            try:
                seq = self.log.append(signal, payload)
            except IngestLogError as exc:
                with self.stats.lock:
                    self.stats.last_error = str(exc)
                raise Unavailable(str(exc), retry_after_s=5) from exc
            self.accepted_seq = seq
            self._queue.append((batch, future, seq, size))
            self._queued_rows += rows
            self._queued_bytes += size
            self._last_rows = rows
            self._last_bytes = size
            self._cond.notify_all()  # the writer, whichever else waits
        return future

    def wait_landed(self, timeout_s: float) -> bool:
        """Wait until every request accepted so far has landed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self.accepted_seq
            while self.landed_seq < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, land everything queued, then stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _take(self) -> list[tuple[Batch, Future[LandResult], int, int]]:
        with self._cond:
            if not self._queue and not self._closing:
                self._cond.wait(_IDLE_S)
            if not self._queue:
                return []  # idle (or closing and drained)
            if self.linger_s and not self._closing and self._queued_rows < self.max_flush_rows // 4:
                self._cond.wait(self.linger_s)
            items: list[tuple[Batch, Future[LandResult], int, int]] = []
            rows = 0
            for item in self._queue:
                if items and rows + item[0].rows > self.max_flush_rows:
                    break
                rows += item[0].rows
                items.append(item)
            return items  # still queued: they leave the queue once landed

    def _run(self) -> None:
        lower_thread_priority(self.nice)  # landing waits; receiving (the ack) does not
        delay = self.retry_s
        closing_failures = 0
        while True:
            items = self._take()
            if not items:
                if self._closing:
                    return  # drained
                self._idle()
                continue
            started = time.perf_counter()
            rows = sum(item[0].rows for item in items)
            size = sum(item[3] for item in items)
            seq = items[-1][2]
            try:
                result = self.lander.land_safely(
                    [item[0] for item in items],
                    log_seq=seq,
                    positions=[item[2] for item in items],
                )
            except Exception as exc:  # a failed landing is retried; the writer lives on
                message = f"landing failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                with self.stats.lock:
                    self.stats.last_error = message
                    self.stats.landing_failures += 1
                self._failing = True
                with self._cond:
                    if self._closing:
                        closing_failures += 1
                        if closing_failures >= 3:
                            # Shutting down on a failing database: the requests stay in the
                            # ingest log and land on the next start.
                            for item in items:
                                item[1].set_exception(Unavailable(message))
                            self._queue.clear()
                            self._queued_rows = 0
                            self._queued_bytes = 0
                            self._cond.notify_all()
                            return
                    else:
                        # New requests notify too: sleep out the whole delay unless closing.
                        deadline = time.monotonic() + delay
                        while not self._closing and (left := deadline - time.monotonic()) > 0:
                            self._cond.wait(left)
                delay = min(delay * 2, 5.0)
                continue
            delay = self.retry_s
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._failing = False
            with self._cond:
                for _ in items:
                    self._queue.popleft()
                self._queued_rows -= rows
                self._queued_bytes -= size
                self.landed_seq = seq
                self._cond.notify_all()
            self.log.release(upto=seq)
            self._record(result, elapsed_ms)
            for item in items:
                item[1].set_result(result)

    def _idle(self) -> None:
        # Nothing to land: the time for work that landings skipped to stay short.
        try:
            self.lander.flush_budget_events()
        except Exception as exc:  # reported; the next idle tick tries again
            with self.stats.lock:
                self.stats.last_error = f"budget events: {type(exc).__name__}: {exc}"

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
        if result.quarantined is not None:  # (after: Stats.lock is not reentrant)
            stats.count_quarantined(result.quarantined)

    def health(self) -> dict[str, Any]:
        """What `/health` reports."""
        stats = self.stats
        with stats.lock:
            return {
                "status": "failing" if self._failing else ("stopping" if self._closing else "ok"),
                "queue": {
                    "rows": self._queued_rows,
                    "requests": len(self._queue),
                    "bytes": self._queued_bytes,
                    "max_rows": self.max_queue_rows,
                    "max_bytes": self.max_queue_bytes,
                },
                "rows_landed": dict(stats.rows_landed),
                "derived_usage_rows": stats.derived_usage_rows,
                "superseded_usage_rows": stats.superseded_usage_rows,
                "rows_rejected": dict(stats.rows_rejected),
                "rejected": {"spans": 0, "usage": 0, "events": 0, **stats.quarantined},
                "requests_rejected": dict(stats.requests_rejected),
                "requests_ok": stats.requests_ok,
                "unauthorized": stats.unauthorized,
                "metric_points_dropped": stats.metric_points_dropped,
                "flushes": stats.flushes,
                "last_flush": stats.last_flush.isoformat() if stats.last_flush else None,
                "last_flush_ms": stats.last_flush_ms,
                "last_error": stats.last_error,
                "landing_failures": stats.landing_failures,
                "ingest_log": {
                    "accepted_seq": self.accepted_seq,
                    "landed_seq": self.landed_seq,
                    "segments": self.log.segments,
                    "directory": str(self.log.directory),
                },
            }
