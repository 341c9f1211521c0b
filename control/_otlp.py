"""`telemetry = "otlp"`: OTLP/HTTP exporters to a collector, usage rows through a durable spool.

What is guaranteed, and what is not:

- **Usage rows** (the billing truth) and events go to `{endpoint}/v1/logs` through
  `SpoolingLogExporter`. Each batch is encoded to OTLP protobuf once; when the collector does
  not take it (connection refused, timeout, 429, 5xx, connection dropped mid-request) the
  encoded batch is written to a spool directory in the data dir (write + fsync + atomic
  rename) and re-sent, oldest first, before any newer batch. Re-sending happens on a
  background thread with exponential backoff (so a process that stops calling still
  delivers), on the next export once the backoff has elapsed, and at shutdown; a spool left
  by a previous process is re-sent by the next one. The collector lands idempotently on
  `comptroller.usage.id`, so a batch re-sent after an ambiguous failure (the collector landed
  it, then died before answering) is harmless: every usage row arrives exactly once.
- **Spans are not spooled.** They go straight to `{endpoint}/v1/traces`; while the collector
  is known to be unreachable (the log exporter is backing off) span batches are dropped at
  once instead of waiting out the SDK's own retries. Spans are diagnostics; the money is in
  the usage rows.
- **The caller never waits for the collector.** Exports run in the batch processors' threads;
  the guarded call only appends to a queue and reads `full_error`. A dead or hung collector
  adds nothing to a call's latency (tests/control/test_otlp_spool.py measures it).

The spool is bounded (`control.spool_max_mb`). Once it holds that much, the exporter records
a `SpoolFull` error and the control plane refuses new calls with it (fail closed: a call whose
usage row could not be kept must not run) until the collector is back and the spool drains
below the bound. Batches of calls admitted before that moment are still kept, up to a hard
limit of twice the bound (at least 16 MiB over it), so that disk use stays bounded too; a
batch beyond the hard limit is dropped and counted in `dropped_records` (logged as an error).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from comptroller._private import private_dir, write_private
from comptroller.control._clock import SYSTEM_CLOCK, Clock
from comptroller.control._errors import ControlError

if TYPE_CHECKING:
    import httpx

    from comptroller.config import Settings

_log = logging.getLogger("comptroller.control.otlp")

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
_MIB = 1024 * 1024
_MIN_OVERSHOOT = 16 * _MIB


class SpoolFull(ControlError):
    """The OTLP spool is full: the collector has been unreachable for too long.

    Attributes:
        path: The spool directory.
        size_bytes: Bytes held in the spool.
        max_bytes: The bound (`control.spool_max_mb`).
        endpoint: The collector the spool waits for, when known.
    """

    def __init__(
        self, path: Path, size_bytes: int, max_bytes: int, *, endpoint: str | None = None
    ) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes
        self.endpoint = endpoint
        where = f"the collector at {endpoint}" if endpoint else "the collector"
        super().__init__(
            f"usage-row spool {path} is full: it holds {size_bytes} bytes "
            f"({size_bytes / _MIB:.1f} MiB) of its {max_bytes}-byte "
            f"({max_bytes / _MIB:.1f} MiB) bound because {where} has not accepted telemetry; "
            "calls are refused rather than run without a usage row. Start the collector "
            "(`comptroller collect`) or point otlp_endpoint at a running one: the spool then "
            "drains by itself and calls resume. To hold more meanwhile, raise "
            "control.spool_max_mb (env COMPTROLLER_CONTROL_SPOOL_MAX_MB)"
        )


class SpoolingLogExporter(LogRecordExporter):
    """Exports log records as OTLP/HTTP protobuf; spools batches the collector did not take.

    Args:
        endpoint: Base URL of the collector (`/v1/logs` is appended).
        spool_dir: Directory of the spool (created if missing).
        max_bytes: Bound on the spool's size; reaching it refuses new calls (`full_error`).
        headers: Extra request headers (e.g. `Authorization: Bearer …`).
        timeout_s: Timeout of one POST.
        retry_base_s: First delay before re-sending the spool after a failed delivery.
        retry_max_s: Ceiling of the doubling delay.
        clock: Monotonic time of the backoff schedule (tests inject `FakeClock`).
        rng: Jitter of the backoff (±20 %, so that many processes do not retry in lockstep).
        background: Re-send on a background thread. Off, the spool is re-sent only by
            `retry_pending`, `drain`, the next export and shutdown (tests drive it so).
    """

    def __init__(
        self,
        endpoint: str,
        spool_dir: Path,
        *,
        max_bytes: int,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        background: bool = True,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.url = self.endpoint + "/v1/logs"
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self.hard_max_bytes = max_bytes + max(max_bytes, _MIN_OVERSHOOT)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._clock = clock or SYSTEM_CLOCK
        self._rng = rng or random.Random()
        self._headers = {"content-type": "application/x-protobuf", **(headers or {})}
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        # Imported here, in the constructing thread, never first in an export thread: a
        # module imported by two threads at once (the application importing openai, which
        # imports httpx, while the exporter does) can be seen half-initialised.
        import httpx  # noqa: F401
        from opentelemetry.exporter.otlp.proto.common import _log_encoder  # noqa: F401

        private_dir(spool_dir)  # usage rows are billing data: 0700, files 0600
        for stale in spool_dir.glob("*.otlp.tmp"):
            # A write cut short by a crash: its records were never acknowledged as kept.
            stale.unlink(missing_ok=True)
        self._size = self._size_on_disk()
        self._empty = threading.Event()
        if not self._size:
            self._empty.set()
        self.full_error: SpoolFull | None = None
        self._check_full()
        self.sent_batches = 0
        self.spooled_batches = 0
        self.dropped_records = 0
        self.failures = 0
        """Consecutive failed deliveries (0: the collector took the last batch)."""
        self._next_retry_at = self._clock.monotonic()
        self._background = background
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._size:
            self._ensure_thread()

    # -- the spool -------------------------------------------------------------------------

    def _spooled(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.otlp"))

    def _size_on_disk(self) -> int:
        size = 0
        for path in self._spooled():
            try:
                size += path.stat().st_size
            except FileNotFoundError:  # another process sharing the spool sent it
                continue
        return size

    def pending(self) -> int:
        """Batches waiting in the spool."""
        return len(self._spooled())

    @property
    def size_bytes(self) -> int:
        """Bytes held in the spool."""
        return self._size

    @property
    def collector_down(self) -> bool:
        """Whether the last delivery failed (the spool is backing off)."""
        return self.failures > 0

    @property
    def next_retry_in_s(self) -> float:
        """Seconds until the spool is due for its next re-send (0: now)."""
        return max(0.0, self._next_retry_at - self._clock.monotonic())

    def _check_full(self) -> None:
        if self._size >= self.max_bytes:
            if self.full_error is None:
                self.full_error = SpoolFull(
                    self.spool_dir, self._size, self.max_bytes, endpoint=self.endpoint
                )
                _log.error("%s", self.full_error)
        elif self.full_error is not None:
            _log.warning("usage-row spool %s drained below its bound: calls resume", self.spool_dir)
            self.full_error = None

    def _spool(self, data: bytes, records: int) -> bool:
        if self._size + len(data) > self.hard_max_bytes:
            self.dropped_records += records
            _log.error(
                "dropped a batch of %d usage rows/events (%d bytes): the spool is past its hard "
                "limit of %d bytes. %s",
                records,
                len(data),
                self.hard_max_bytes,
                self.full_error or SpoolFull(self.spool_dir, self._size, self.max_bytes),
            )
            return False
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.otlp"
        tmp = self.spool_dir / (name + ".tmp")
        write_private(tmp, data, sync=True)
        tmp.rename(self.spool_dir / name)
        self._size += len(data)
        self._empty.clear()
        self.spooled_batches += 1
        self._check_full()
        self._ensure_thread()
        return True

    def _send(self, data: bytes) -> bool:
        import httpx

        response: httpx.Response | None = None
        for attempt in (1, 2):
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout)
            try:
                response = self._client.post(self.url, content=data, headers=self._headers)
                break
            except httpx.HTTPError as exc:
                # A fresh connection for the next attempt: a pooled one may point at a
                # collector process that has died since.
                self._client.close()
                self._client = None
                stale = isinstance(exc, httpx.TransportError) and not isinstance(
                    exc, httpx.ConnectError | httpx.TimeoutException
                )
                if attempt == 2 or not stale:
                    self._failed(f"{type(exc).__name__}: {exc}")
                    return False
        assert response is not None
        if response.status_code < 300:
            self.sent_batches += 1
            self._succeeded()
            return True
        if response.status_code in _RETRYABLE:
            self._failed(f"HTTP {response.status_code}")
            return False
        # A request the collector refuses outright (400: malformed) would be refused again:
        # keep it aside for inspection rather than block the spool.
        _log.error(
            "OTLP log export refused with HTTP %s; batch kept in %s",
            response.status_code,
            self.spool_dir / "rejected",
        )
        bad = self.spool_dir / "rejected"
        private_dir(bad)
        write_private(bad / f"{time.time_ns()}.otlp", data)
        self._succeeded()
        return True

    def _failed(self, reason: str) -> None:
        self.failures += 1
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** (self.failures - 1))
        delay *= 0.8 + 0.4 * self._rng.random()
        self._next_retry_at = self._clock.monotonic() + delay
        log = _log.warning if self.failures == 1 else _log.debug
        log(
            "OTLP log export to %s failed (%s); usage rows kept in %s, re-sent in %.1f s",
            self.url,
            reason,
            self.spool_dir,
            delay,
        )

    def _succeeded(self) -> None:
        if self.failures:
            _log.warning("OTLP log export to %s delivers again", self.url)
        self.failures = 0
        self._next_retry_at = self._clock.monotonic()

    def drain(self) -> bool:
        """Re-send spooled batches now, oldest first, whatever the backoff; True when the
        spool is empty."""
        with self._lock:
            return self._drain_locked()

    def retry_pending(self) -> bool:
        """Re-send the spool if its backoff has elapsed (what the background thread does).

        Returns:
            True when the spool is empty afterwards.
        """
        with self._lock:
            if not self._size:
                return True
            if self._clock.monotonic() < self._next_retry_at:
                return False
            return self._drain_locked()

    def _drain_locked(self) -> bool:
        for path in self._spooled():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # another process sharing the spool sent it
                continue
            if not self._send(data):
                self._check_full()
                return False
            path.unlink(missing_ok=True)
            self._size = max(0, self._size - len(data))
        self._size = self._size_on_disk()
        if not self._size:
            self._empty.set()
        self._check_full()
        return True

    def wait_empty(self, timeout_s: float) -> bool:
        """Block until the spool is empty (delivered) or `timeout_s` passes; True if empty."""
        return self._empty.wait(timeout_s)

    # -- the background re-sender ----------------------------------------------------------

    def _ensure_thread(self) -> None:
        if not self._background or self._stop.is_set():
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="comptroller-otlp-spool", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.next_retry_in_s if self._size else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.retry_pending()
            except Exception:  # never let the re-sender die: it is the delivery guarantee
                _log.exception("re-sending the usage-row spool %s failed", self.spool_dir)
                self._failed("unexpected error")

    # -- LogRecordExporter -----------------------------------------------------------------

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

        data = encode_logs(batch).SerializeToString()
        with self._lock:
            # Older batches go first; while the collector is backing off, no request at all:
            # straight to the spool, so that an outage costs this thread one fsync a batch.
            if self._size and (
                self._clock.monotonic() < self._next_retry_at or not self._drain_locked()
            ):
                ok = self._spool(data, len(batch))
            elif self._send(data):
                return LogRecordExportResult.SUCCESS
            else:
                ok = self._spool(data, len(batch))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.drain()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self.drain()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout + 1.0)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class _GatedSpanExporter(SpanExporter):
    """Drops span batches at once while the log exporter knows the collector is down."""

    def __init__(self, inner: SpanExporter, logs: SpoolingLogExporter) -> None:
        self.inner = inner
        self.logs = logs
        self.dropped_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.logs.collector_down:
            self.dropped_batches += 1
            return SpanExportResult.FAILURE
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class OtlpSink:
    """The `TelemetrySink` of `telemetry = "otlp"`.

    Args:
        endpoint: Base URL of the collector (default `http://127.0.0.1:4318`).
        spool_dir: The usage-row spool.
        max_spool_bytes: Bound on the spool.
        token: Bearer token of the collector, if it requires one.
        span_timeout_s: Timeout of span exports.
        log_timeout_s: Timeout of one usage-row POST.
        retry_base_s: First delay of the spool's re-send backoff.
        retry_max_s: Ceiling of the spool's re-send backoff.
    """

    def __init__(
        self,
        endpoint: str | None,
        spool_dir: Path,
        *,
        max_spool_bytes: int = 256 * _MIB,
        token: str | None = None,
        span_timeout_s: float = 5.0,
        log_timeout_s: float = 5.0,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._headers = headers
        self._span_timeout = span_timeout_s
        self.logs = SpoolingLogExporter(
            self.endpoint,
            spool_dir,
            max_bytes=max_spool_bytes,
            headers=headers,
            timeout_s=log_timeout_s,
            retry_base_s=retry_base_s,
            retry_max_s=retry_max_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OtlpSink:
        """From `otlp_endpoint`, the collector token, the data dir and `control.spool_max_mb`."""
        settings.ensure_data_dir()
        return cls(
            settings.otlp_endpoint,
            settings.data_dir / "spool",
            max_spool_bytes=int(settings.control.spool_max_mb * _MIB),
            token=settings.collector.bearer_token(),
        )

    @property
    def full_error(self) -> SpoolFull | None:
        """Set while the spool is full: the control plane refuses calls with it."""
        return self.logs.full_error

    def span_exporter(self) -> SpanExporter:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        inner = OTLPSpanExporter(
            endpoint=self.endpoint + "/v1/traces",
            headers=self._headers,
            timeout=self._span_timeout,
        )
        return _GatedSpanExporter(inner, self.logs)

    def log_exporter(self) -> LogRecordExporter:
        return self.logs

    def shutdown(self) -> None:
        return None
