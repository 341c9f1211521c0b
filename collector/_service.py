"""The collector's core, shared by the HTTP and gRPC receivers and the read API.

`Collector` owns the DuckDB file (one writer per file), the normaliser and the landing
pipeline. Receivers hand it decoded requests; readers of other processes query through it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import ipaddress
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from google.protobuf.message import Message

from comptroller import analytics
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector._alert_log import start_notifier
from comptroller.collector._decode import Encoding, decode
from comptroller.collector._ingest_log import IngestLog
from comptroller.collector._land import Lander
from comptroller.collector._native import NativeDecoder, available, unavailable_reason
from comptroller.collector._normalise import Batch, Limits, Normaliser
from comptroller.collector._pipeline import MAX_FLUSH_ROWS, MAX_QUEUE_MB, Pipeline, Stats
from comptroller.collector._priority import at_lower_priority
from comptroller.collector._validate import validate
from comptroller.config import AlertSettings
from comptroller.errors import ConfigError
from comptroller.pricing import Pricer

if TYPE_CHECKING:
    from comptroller.config import AttributionBudget

_stop_log = logging.getLogger("comptroller.collector.stop")

ROW_GROUP_SIZE = 8192
"""Rows per row group the collector writes by default (`collector.row_group_size`)."""
_READ_WAIT_S = 2.0
"""How long a read waits for the requests acknowledged before it to land (then answers)."""


def default_log_dir(db_path: Path) -> Path:
    """Where a collector logs accepted requests by default: `<db>.ingest` beside the file."""
    return db_path.with_name(db_path.name + ".ingest")


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Collector:
    """The DuckDB writer with its normaliser and queue.

    Args:
        db_path: The DuckDB file (created and migrated if needed).
        timezone: Time zone of the daily rollup.
        token: Bearer token clients must send (None: none required).
        limits: Per-span and per-record limits.
        max_queue_rows: Rows that may wait for landing before requests get 429.
        max_queue_mb: Arrow memory (MiB) that may wait for landing before requests get 429.
        max_request_bytes: Largest request body, after inflating.
        duckdb_memory_mb: DuckDB's memory limit.
        prices: Prices derived usage rows (default: genai-prices only; pass
            `Pricer.from_settings(settings)` for the configured fallback prices).
        ingest_log_dir: Where accepted requests are logged before they are acknowledged
            (default: `<db_path>.ingest` beside the database).
        ingest_log_fsync: Flush each logged request to the device (survives a power cut).
        linger_s: How long the writer waits to gather more requests into one transaction.
        landing_nice: How much lower the writer's and DuckDB's threads run than the
            receivers (Linux nice increment; 0 for the same priority).
        native_decoder: Decode protobuf trace exports with the C extension when it is
            built (`collector/_native.py`); False uses the reference normaliser alone.
        checkpoint_mb: DuckDB's WAL size that triggers a checkpoint.
        row_group_size: Rows per row group the collector writes (None: DuckDB's default,
            122,880). A landing that appends a row group's worth to a table writes it
            compressed to the file, skipping the WAL and the checkpoint's compression.
        query_timeout_s: Time limit of one `/api/query` (and budget-state) statement.
        query_max_rows: Most rows one `/api/query` answer holds (more are cut, and marked).
        query_concurrency: `/api/query` statements that run at once (the rest wait).
        query_queue: `/api/query` requests that may wait for a slot (beyond: 429).
        query_max_body_bytes: Largest `/api/query` request body (beyond: 413).
    """

    def __init__(
        self,
        db_path: Path | str,
        *,
        timezone: str = "UTC",
        token: str | None = None,
        limits: Limits | None = None,
        max_queue_rows: int = 50_000,
        max_queue_mb: int = MAX_QUEUE_MB,
        max_request_bytes: int = 16 * 1024 * 1024,
        duckdb_memory_mb: int = 128,
        prices: Pricer | None = None,
        alerts: AlertSettings | None = None,
        ingest_log_dir: Path | str | None = None,
        ingest_log_fsync: bool = False,
        linger_s: float = 0.005,
        landing_nice: int = 10,
        native_decoder: bool = True,
        checkpoint_mb: int = 128,
        row_group_size: int | None = ROW_GROUP_SIZE,
        query_timeout_s: float = 30.0,
        query_max_rows: int = 100_000,
        query_concurrency: int = 2,
        query_queue: int = 16,
        query_max_body_bytes: int = 1 << 20,
        attribution_budgets: Sequence[AttributionBudget] = (),
    ) -> None:
        self.db_path = Path(db_path)
        self.attribution_budgets = tuple(attribution_budgets)
        self.query_limits = analytics.Limits(
            timeout_s=query_timeout_s,
            max_rows=query_max_rows,
            setting="collector.query_timeout_s",
        )
        # Budget state is what control planes depend on: bounded in time, never cut.
        self.budget_limits = analytics.Limits(
            timeout_s=query_timeout_s, setting="collector.query_timeout_s"
        )
        self.query_concurrency = query_concurrency
        self.query_queue = query_queue
        self.query_max_body_bytes = query_max_body_bytes
        self.timezone = timezone
        self.token = token
        self.max_request_bytes = max_request_bytes
        # Opened from a thread of lower priority: DuckDB's worker threads inherit it.
        self.con = at_lower_priority(
            lambda: analytics.connect(self.db_path, row_group_size=row_group_size), landing_nice
        )
        # Bounded memory: DuckDB's buffer pool is the collector's largest consumer.
        self.con.execute(f"SET memory_limit = '{duckdb_memory_mb}MB'").fetchall()
        # A checkpoint compresses the row groups appended since the last one, and rewrites
        # the last, partly filled one: at DuckDB's 16 MB default a busy collector rewrote
        # each row group ~10 times (landing 40 µs a span, 290 bytes a span on disk; at 128 MB
        # 22 µs and 160 bytes: docs/PERFORMANCE.md).
        self.con.execute(f"SET checkpoint_threshold = '{checkpoint_mb}MB'").fetchall()
        if row_group_size is not None:
            # A landing of N row groups and a tail leaves a small row group behind; the
            # checkpoint's vacuum merged those by rewriting their neighbours, which left
            # about half the file as free blocks (283 bytes a span against 204 without it).
            # Vacuum also reclaims deleted rows: only superseded derived rows, which are few.
            self.con.execute("SET max_vacuum_tasks = 0").fetchall()
        # A long statement (a checkpoint, a big query) would draw DuckDB's progress bar on
        # the collector's stdout, among its logs.
        self.con.execute("SET enable_progress_bar = false").fetchall()
        # The read API runs other people's SELECTs on this database: no file access.
        self.con.execute("SET enable_external_access = false").fetchall()
        self.con.execute("SET lock_configuration = true").fetchall()
        self.normaliser = Normaliser(limits=limits, prices=prices)
        self.native = NativeDecoder(self.normaliser) if native_decoder and available() else None
        self.stats = Stats()
        # Budget crossings are looked for at most once a second under load (each check
        # reads every budget's state), and at once when the writer idles or a read comes.
        self.notifier = start_notifier(self.con, alerts) if alerts is not None else None
        lander = Lander(
            self.con,
            timezone=timezone,
            budget_events_every_s=1.0,
            warnings=WarningPolicy.from_settings(alerts) if alerts is not None else None,
            on_alerts=self.notifier.offer if self.notifier is not None else None,
            attribution_budgets=self.attribution_budgets,
        )
        log_dir = Path(ingest_log_dir) if ingest_log_dir else default_log_dir(self.db_path)
        try:
            self.log = IngestLog(log_dir, fsync=ingest_log_fsync)
            self.log.bind(lander.database_id())
            self.replayed = self._replay(lander, self.log)
        except BaseException:
            self.con.close()
            raise
        self.pipeline = Pipeline(
            lander,
            self.log,
            max_queue_rows=max_queue_rows,
            max_queue_bytes=max_queue_mb << 20,
            linger_s=linger_s,
            nice=landing_nice,
            stats=self.stats,
        )
        self._closed = False
        self._close_lock = threading.Lock()

    def _replay(self, lander: Lander, log: IngestLog) -> int:
        """Land the logged requests a previous run acknowledged but did not land."""
        landed = lander.landed_log_seq()
        log.advance_to(landed)  # a log directory removed by hand must not reuse numbers
        replayed = 0
        group: list[Batch] = []
        rows = 0
        last = landed
        for entry in log.replay(after=landed):
            _, batch = self.decode_normalise(entry.signal, "protobuf", entry.payload, count=False)
            group.append(batch)
            rows += batch.rows
            last = entry.seq
            replayed += 1
            if rows >= MAX_FLUSH_ROWS:
                lander.land_safely(group, log_seq=last)
                group, rows = [], 0
        if group:
            lander.land_safely(group, log_seq=last)
        if replayed:
            log.release(upto=last)
        return replayed

    def accept(
        self, signal: str, message: Message | None, batch: Batch, payload: bytes | None
    ) -> None:
        """Make an export durable and queue its rows: once this returns, acknowledge it.

        Args:
            signal: `traces`, `logs` or `metrics` (metrics land nothing).
            message: The decoded request (None when `payload` is given).
            batch: What `normalise` made of it.
            payload: The request as protobuf bytes, if the receiver has them (else they
                are serialised from `message`).

        Raises:
            QueueFull: Too many rows wait for landing (answer 429).
            Unavailable: Closing, or the ingest log cannot be written (answer 503).
        """
        if batch.rows == 0:
            self.pipeline.check_open()
            return
        if payload is None:
            if message is None:
                raise ValueError("accept needs the decoded message or its protobuf bytes")
            payload = message.SerializeToString()
        self.pipeline.submit(batch, signal=signal, payload=payload)

    def authorised(self, header: str | None) -> bool:
        """Check an `Authorization` header against the token (always true without one)."""
        if self.token is None:
            return True
        expected = f"Bearer {self.token}"
        ok = header is not None and hmac.compare_digest(header.encode(), expected.encode())
        if not ok:
            self.stats.count_unauthorized()
        return ok

    def decode_normalise(
        self,
        signal: str,
        encoding: Encoding,
        body: bytes,
        *,
        count: bool = True,
        client: str | None = None,
    ) -> tuple[Message | None, Batch]:
        """Decode, normalise and validate an export request body (inflated).

        Protobuf trace and log exports take the native decoder when it is built; a request
        it declines, and every other request, is decoded by upb and normalised by the
        reference. Either way the batch is then validated (`_validate.py`): rows out of
        their column's range are split off into `rejected_records` and counted as rejected.

        Args:
            count: Count rejections in the stats (not on replay).
            client: The sender's address, recorded with quarantined records.

        Returns:
            The decoded message (None when the native decoder handled the body) and the batch.

        Raises:
            DecodeError: The body cannot be decoded.
        """
        message: Message | None = None
        batch: Batch | None = None
        if self.native is not None and encoding == "protobuf" and signal != "metrics":
            native = self.native.normalise(signal, body)
            if not isinstance(native, str):
                batch = native
        if batch is None:
            limits = self.normaliser.limits
            message = decode(
                signal,  # type: ignore[arg-type]
                encoding,
                body,
                max_attributes=limits.max_span_attributes
                if signal == "traces"
                else limits.max_record_attributes,
            )
            size = len(body) if encoding == "protobuf" else None
            # metrics count their dropped points there; the rest count below, validated
            batch = self.normalise(signal, message, count=count and signal == "metrics", size=size)
        if signal != "metrics":
            decoded = message
            validate(
                batch,
                signal=signal,
                latest_ns=self.normaliser.latest_ns(),
                received=dt.datetime.fromtimestamp(self.normaliser.now_ns() / 1e9, dt.UTC),
                client=client,
                request=lambda: decoded or decode(signal, "protobuf", body),  # type: ignore[arg-type]
            )
        if count:
            self.stats.count_rows_rejected(batch.reasons)
            quarantined = batch.tables.get("rejected_records")
            if quarantined is not None:
                self.stats.count_quarantined(quarantined)
        return message, batch

    def native_health(self) -> dict[str, Any]:
        """The native decoder's part of `/health`."""
        if self.native is None:
            reason = "disabled by setting" if available() else unavailable_reason()
            return {"enabled": False, "reason": reason}
        return {"enabled": True, **self.native.stats.as_dict()}

    def normalise(
        self, signal: str, message: Message, *, count: bool = True, size: int | None = None
    ) -> Batch:
        """Normalise a decoded export request of `signal`.

        Args:
            signal: `traces`, `logs` or `metrics`.
            message: The decoded request.
            count: Count rejections and dropped points in the stats (not on replay).
            size: The request's protobuf size in bytes, when the receiver has it.
        """
        if signal == "traces":
            batch = self.normaliser.traces(message, size=size)  # type: ignore[arg-type]
        elif signal == "logs":
            batch = self.normaliser.logs(message)  # type: ignore[arg-type]
        else:
            batch = Batch()
            points = _count_points(message)
            if count:
                with self.stats.lock:
                    self.stats.metric_points_dropped += points
        if count:
            self.stats.count_rows_rejected(batch.reasons)
        return batch

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run one read statement on a cursor of its own, in a read-only transaction,
        within `query_limits` (time limit, row cap).

        Raises:
            comptroller.analytics.QueryError: Not a single read statement, or it failed.
            comptroller.analytics.QueryTimeout: It ran past the time limit.
        """
        analytics.check_read_only(sql)
        self._catch_up()
        return analytics.run_read_only(self.con, sql, params, limits=self.query_limits)

    def _catch_up(self) -> None:
        """Reads see every request acknowledged before them, and its budget events."""
        if self.pipeline.wait_landed(_READ_WAIT_S):
            self.pipeline.lander.flush_budget_events()

    def budget_state(self, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Today's spend per budget key, as JSON-ready dicts."""
        self._catch_up()
        reader = analytics.DuckDBReader(self.con, limits=self.budget_limits)
        try:
            states = analytics.budget_state(
                reader,
                now=now,
                timezone=self.timezone,
                attribution_budgets=self.attribution_budgets,
            )
        finally:
            reader.close()
        return [_jsonable(asdict(state)) for state in states]

    def close(self) -> None:
        """Land what was accepted, then close the database. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        pipeline = self.pipeline
        queued_requests, queued_rows = pipeline.queued_batches, pipeline.queued_rows
        pipeline.close()
        _log_stop(pipeline, queued_requests, queued_rows)
        # Everything landed: the log is emptied (numbering resumes from the database).
        self.log.clear(landed=self.pipeline.landed_seq)
        self.log.close()
        if self.notifier is not None:
            self.notifier.close()
        # The data is in the WAL already; a checkpoint is a courtesy.
        with contextlib.suppress(Exception):
            self.con.execute("CHECKPOINT").fetchall()
        self.con.close()


def _log_stop(pipeline: Pipeline, queued_requests: int, queued_rows: int) -> None:
    """One INFO line (`comptroller.collector.stop`) saying what the stop flushed; the CLI
    prints it, a library user's logging decides."""
    stats = pipeline.stats
    with stats.lock:
        requests, rows = stats.requests_ok, sum(stats.rows_landed.values())
    left = pipeline.queued_rows
    flushed = (
        f"flushed {_count(queued_requests, 'queued request')} ({_count(queued_rows, 'row')})"
        if queued_requests
        else "nothing was waiting to land"
    )
    unlanded = (
        f"; {_count(left, 'row')} NOT landed (kept in the ingest log: they land at the next start)"
        if left
        else ""
    )
    _stop_log.info(
        "stopped: %s; landed since the start: %s, %s%s",
        flushed,
        _count(requests, "request"),
        _count(rows, "row"),
        unlanded,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token.

    Raises:
        ConfigError: `host` is not loopback and no token is set.
    """
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"listening on {host} needs a bearer token: set COMPTROLLER_COLLECTOR_TOKEN "
            "(or [collector] token) or listen on 127.0.0.1"
        )


def _count_points(message: Message) -> int:
    total = 0
    for rm in getattr(message, "resource_metrics", ()):
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    if value in (float("inf"), float("-inf")):
        return str(value)
    return value
