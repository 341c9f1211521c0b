"""The collector's core, shared by the HTTP and gRPC receivers and the read API.

`Collector` owns the ledger's writer, the normaliser and the landing pipeline. Receivers
hand it decoded requests; readers of other processes query through it.

The ledger is a DuckDB file (one writer per file: this collector), or a PostgreSQL database
(`postgresql://…`) that any number of collectors land into at once, each under its own
`collector_id` (`collector/_land_pg.py`: exactly once per id and ingest-log position). The
ingest log stays local either way. Against PostgreSQL the collector holds a session
advisory lock on its id for its lifetime, so a second collector started with the id of a
running one is refused instead of interleaving with it; `/api/budget-state` reads the
ledger's rollups there (and the day's usage rows for budgets by attribution), and
`/api/query` runs its DuckDB SQL through `analytics.PgReader` (the rows it needs fetched
from PostgreSQL, within the collector's query limits, as the collector's role: every row, as
a DuckDB collector's). A fleet on PostgreSQL behaves as one DuckDB collector: budget
crossings (by attribution too) and spend anomalies are recorded once and alerted once,
webhook outcomes go to the ledger's `alert_deliveries`, and alerts left unanswered are sent
again at a start by one collector (`collector/_alert_log.py`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
from google.protobuf.message import Message

from comptroller import analytics
from comptroller._net import is_loopback
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector._alert_log import start_notifier, start_pg_notifier
from comptroller.collector._decode import Encoding, decode
from comptroller.collector._ingest_log import IngestLog
from comptroller.collector._land import Lander, LedgerLander
from comptroller.collector._land_pg import PgLander
from comptroller.collector._native import NativeDecoder, available, unavailable_reason
from comptroller.collector._normalise import Batch, Limits, Normaliser
from comptroller.collector._notify import Notifier
from comptroller.collector._pipeline import MAX_FLUSH_ROWS, MAX_QUEUE_MB, Pipeline, Stats
from comptroller.collector._priority import at_lower_priority
from comptroller.collector._validate import validate
from comptroller.config import AlertSettings
from comptroller.config._collector import is_postgres_url, redacted_url
from comptroller.errors import ComptrollerError, ConfigError
from comptroller.pricing import Pricer

if TYPE_CHECKING:
    import duckdb
    from adbc_driver_postgresql.dbapi import Connection as PgConnection

    from comptroller.config import AttributionBudget

_log = logging.getLogger("comptroller.collector")
_stop_log = logging.getLogger("comptroller.collector.stop")

ROW_GROUP_SIZE = 8192
"""Rows per row group the collector writes by default (`collector.row_group_size`)."""
_READ_WAIT_S = 2.0
"""How long a read waits for the requests acknowledged before it to land (then answers)."""


def default_log_dir(db_path: Path) -> Path:
    """Where a collector logs accepted requests by default: `<db>.ingest` beside the file."""
    return db_path.with_name(db_path.name + ".ingest")


def pg_log_dir(data_dir: Path, collector_id: str) -> Path:
    """Where a collector landing into PostgreSQL logs accepted requests by default:
    `ledger-<collector id>.ingest` in the data directory (one log per id)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", collector_id)
    if safe != collector_id:  # two ids that read the same once made safe stay apart
        safe += "-" + hashlib.blake2b(collector_id.encode(), digest_size=4).hexdigest()
    return data_dir / f"ledger-{safe}.ingest"


class QueryNotServed(ComptrollerError):
    """`/api/query` asked of a collector that cannot serve it (HTTP 501). No longer raised
    for a PostgreSQL ledger (served through `analytics.PgReader`); kept for callers."""


QUERY_ON_POSTGRES: Final = (
    "this collector lands into PostgreSQL: /api/query runs SQL on a DuckDB ledger only. "
    "Query the PostgreSQL database itself (comptroller sql --db postgresql://…, or psql); "
    "/api/budget-state is served here"
)
"""What `/api/query` answered (501) on a PostgreSQL ledger before it was served there."""
_ID_LOCK_WAIT_S = 5.0
"""How long a start waits for its id's lock (a killed predecessor's session to end)."""


def pg_target(url: str) -> tuple[str, str | None]:
    """The ledger URL and the schema holding the ledger (None: the server's search path).

    The schema is comptroller's `?schema=name`, else a `search_path` the URL's `options`
    set (`?options=-csearch_path%3Dname`): either way `connect_pg` creates and migrates
    it. (With a schema, the URL's other `options` are not passed on.)
    """
    schema: str | None = None
    for key, value in parse_qsl(urlsplit(url).query):
        if key == "schema" and value:
            return url, value
        if key == "options":
            found = re.search(r"-c\s*search_path\s*=\s*([A-Za-z0-9_]+)", value)
            if found is not None:
                schema = found.group(1)
    return url, schema


def _no_ledger() -> PgConnection:
    raise ConfigError("this collector's ledger is not PostgreSQL")


def _named(con: PgConnection, collector_id: str) -> PgConnection:
    """`con`, named after its collector in `pg_stat_activity` (as the lander's session)."""
    cur = con.cursor()
    try:
        cur.execute(
            "SELECT set_config('application_name', $1, false)",
            ["comptroller collector " + collector_id[:40]],
        )
        cur.fetchall()
        con.commit()
    finally:
        cur.close()
    return con


def _lock_log_dir(directory: Path) -> int:
    """Lock `directory` (its `LOCK` file) for this process; the open descriptor.

    Raises:
        ConfigError: Another running collector uses it.
    """
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"the ingest log {directory} is used by another running collector: give each "
            "collector its own data directory or collector.ingest_log_dir"
        ) from None
    return fd


def _connect_pg_retrying(
    connect: Callable[..., PgConnection], url: str, schema: str | None
) -> PgConnection:
    """`connect_pg`, once more when a collector starting at the same moment created the
    schema first (PostgreSQL's `CREATE SCHEMA IF NOT EXISTS` is not safe against a
    concurrent one: it may fail with a unique violation instead of finding the schema)."""
    try:
        return connect(url, schema=schema)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) not in ("23505", "42P06"):
            raise
    time.sleep(0.1)
    return connect(url, schema=schema)


def claim_collector_id(con: PgConnection, collector_id: str, *, wait_s: float) -> None:
    """Hold `collector_id`'s advisory lock for the connection's session.

    Raises:
        ConfigError: Another running collector holds the id (after `wait_s`: the session of
            a collector killed a moment ago may take that long to end).
    """
    deadline = time.monotonic() + wait_s
    _named(con, collector_id)
    cur = con.cursor()
    try:
        while True:
            cur.execute(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                ["comptroller.collector:" + collector_id],
            )
            (held,) = cur.fetchone() or (False,)
            con.commit()
            if held:
                return
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"collector id {collector_id!r} is held by another collector running on "
                    "this ledger: give each collector its own collector.collector_id "
                    "(--collector-id, COMPTROLLER_COLLECTOR_COLLECTOR_ID), or stop the other"
                )
            time.sleep(0.2)
    finally:
        cur.close()


class Collector:
    """The ledger's writer with its normaliser and queue.

    Args:
        db_path: The DuckDB file (created and migrated if needed), or the URL of a
            PostgreSQL ledger (`postgresql://…`; migrated if needed; a schema of its own
            with `?schema=name` or `?options=-csearch_path%3Dname`).
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
        attribution_budgets: Budgets by attribution (their state and crossings, on either
            ledger).
        collector_id: This collector's id in a PostgreSQL ledger (required there, with
            `ingest_log_dir`; unused for a DuckDB file).

    Raises:
        ConfigError: The ledger cannot be opened, or (PostgreSQL) no collector id or log
            directory is given, or a running collector holds the id.
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
        collector_id: str | None = None,
    ) -> None:
        self.ledger_url = str(db_path) if is_postgres_url(db_path) else None
        """The PostgreSQL ledger's URL (None: a DuckDB file, `db_path`)."""
        self.db_path = Path(db_path) if self.ledger_url is None else None
        self.collector_id = collector_id
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
        self.normaliser = Normaliser(limits=limits, prices=prices)
        self.native = NativeDecoder(self.normaliser) if native_decoder and available() else None
        self.stats = Stats()
        self.con: duckdb.DuckDBPyConnection | None = None
        """The DuckDB file's connection (None for a PostgreSQL ledger)."""
        self._pg_read: PgConnection | None = None
        """A PostgreSQL ledger's connection for budget state (the lander has its own)."""
        self._pg_open_read: Callable[[], PgConnection] = _no_ledger
        self._pg_reader: analytics.PgReader | None = None
        """`/api/query`'s reader of a PostgreSQL ledger (opened at the first query)."""
        self._pg_reader_lock = threading.Lock()
        self.notifier: Notifier | None = None
        lander: LedgerLander
        if self.ledger_url is not None:
            lander = self._open_pg(self.ledger_url, alerts, ingest_log_dir)
            log_dir = Path(str(ingest_log_dir))
            bound = f"{lander.database_id()}:{self.collector_id}"
        else:
            assert self.db_path is not None
            lander = self._open_duckdb(
                self.db_path,
                alerts=alerts,
                landing_nice=landing_nice,
                row_group_size=row_group_size,
                duckdb_memory_mb=duckdb_memory_mb,
                checkpoint_mb=checkpoint_mb,
            )
            log_dir = Path(ingest_log_dir) if ingest_log_dir else default_log_dir(self.db_path)
            bound = lander.database_id()
        self._log_lock: int | None = None
        try:
            self.log = IngestLog(log_dir, fsync=ingest_log_fsync)
            if self.ledger_url is not None:
                # A DuckDB file's lock keeps a second collector off its log; a PostgreSQL
                # ledger takes many collectors, so the log directory is locked itself.
                self._log_lock = _lock_log_dir(log_dir)
            self.log.bind(bound)
            self.replayed = self._replay(lander, self.log)
        except BaseException:
            self._close_stores()
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

    def _open_duckdb(
        self,
        db_path: Path,
        *,
        alerts: AlertSettings | None,
        landing_nice: int,
        row_group_size: int | None,
        duckdb_memory_mb: int,
        checkpoint_mb: int,
    ) -> Lander:
        """Open the DuckDB file, set it up for the collector, and its lander."""
        # Opened from a thread of lower priority: DuckDB's worker threads inherit it.
        self.con = con = at_lower_priority(
            lambda: analytics.connect(db_path, row_group_size=row_group_size), landing_nice
        )
        # Bounded memory: DuckDB's buffer pool is the collector's largest consumer.
        con.execute(f"SET memory_limit = '{duckdb_memory_mb}MB'").fetchall()
        # A checkpoint compresses the row groups appended since the last one, and rewrites
        # the last, partly filled one: at DuckDB's 16 MB default a busy collector rewrote
        # each row group ~10 times (landing 40 µs a span, 290 bytes a span on disk; at 128 MB
        # 22 µs and 160 bytes: docs/PERFORMANCE.md).
        con.execute(f"SET checkpoint_threshold = '{checkpoint_mb}MB'").fetchall()
        if row_group_size is not None:
            # A landing of N row groups and a tail leaves a small row group behind; the
            # checkpoint's vacuum merged those by rewriting their neighbours, which left
            # about half the file as free blocks (283 bytes a span against 204 without it).
            # Vacuum also reclaims deleted rows: only superseded derived rows, which are few.
            con.execute("SET max_vacuum_tasks = 0").fetchall()
        # A long statement (a checkpoint, a big query) would draw DuckDB's progress bar on
        # the collector's stdout, among its logs.
        con.execute("SET enable_progress_bar = false").fetchall()
        # The read API runs other people's SELECTs on this database: no file access.
        con.execute("SET enable_external_access = false").fetchall()
        con.execute("SET lock_configuration = true").fetchall()
        # Budget crossings are looked for at most once a second under load (each check
        # reads every budget's state), and at once when the writer idles or a read comes.
        self.notifier = start_notifier(con, alerts) if alerts is not None else None
        return Lander(
            con,
            timezone=self.timezone,
            budget_events_every_s=1.0,
            warnings=WarningPolicy.from_settings(alerts) if alerts is not None else None,
            on_alerts=self.notifier.offer if self.notifier is not None else None,
            attribution_budgets=self.attribution_budgets,
        )

    def _open_pg(
        self, url: str, alerts: AlertSettings | None, ingest_log_dir: Path | str | None
    ) -> PgLander:
        """Open the PostgreSQL ledger, claim this collector's id, and its lander."""
        from comptroller.analytics._pg_schema import connect_pg

        if not self.collector_id:
            raise ConfigError(
                "a collector landing into PostgreSQL needs its collector id "
                "(collector.collector_id; `comptroller collect` makes one in the data directory)"
            )
        if ingest_log_dir is None:
            raise ConfigError(
                "a collector landing into PostgreSQL needs a local ingest log directory "
                "(collector.ingest_log_dir; `comptroller collect` uses the data directory)"
            )
        target, schema = pg_target(url)
        con = _connect_pg_retrying(connect_pg, target, schema)
        try:
            claim_collector_id(con, self.collector_id, wait_s=_ID_LOCK_WAIT_S)
            collector_id = self.collector_id
            if alerts is not None and alerts.webhooks:
                # Outcomes go to the ledger's alert_deliveries through a session of the
                # notifier's own; what no webhook answered in the last day is sent again,
                # each (alert, webhook) claimed first so that one collector of the fleet
                # sends it.
                self.notifier = start_pg_notifier(
                    lambda: _named(connect_pg(target, schema=schema, migrate=False), collector_id),
                    collector_id,
                    alerts,
                )

            def reconnect() -> PgConnection:
                # A new session: the id's lock went with the old one, and is taken again.
                new = connect_pg(target, schema=schema, migrate=False)
                try:
                    claim_collector_id(new, collector_id, wait_s=_ID_LOCK_WAIT_S)
                except BaseException:
                    new.close()
                    raise
                return new

            lander = PgLander(
                con,
                attribution_budgets=self.attribution_budgets,
                collector_id=collector_id,
                timezone=self.timezone,
                budget_events_every_s=1.0,
                warnings=WarningPolicy.from_settings(alerts) if alerts is not None else None,
                on_alerts=self.notifier.offer if self.notifier is not None else None,
                reconnect=reconnect,
            )
            self._pg_lander = lander
            self._pg_open_read = lambda: _named(
                connect_pg(target, schema=schema, migrate=False), collector_id
            )
            self._pg_read = self._pg_open_read()
        except BaseException:
            con.close()
            if self.notifier is not None:
                self.notifier.close()
            raise
        return lander

    def _close_stores(self) -> None:
        """Close the ledger's connections (and the notifier), unlock the log directory."""
        lock: int | None = getattr(self, "_log_lock", None)
        if lock is not None:
            os.close(lock)
            self._log_lock = None
        if self.notifier is not None:
            self.notifier.close()
        if self.con is not None:
            self.con.close()
        reader: analytics.PgReader | None = getattr(self, "_pg_reader", None)
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
        lander: PgLander | None = getattr(self, "_pg_lander", None)
        for con in (self._pg_read, lander.con if lander is not None else None):
            if con is not None:
                with contextlib.suppress(Exception):
                    con.close()

    def _replay(self, lander: LedgerLander, log: IngestLog) -> int:
        """Land the logged requests a previous run acknowledged but did not land."""
        landed = lander.landed_log_seq()
        log.advance_to(landed)  # a log directory removed by hand must not reuse numbers
        replayed = 0
        group: list[Batch] = []
        positions: list[int] = []
        rows = 0
        last = landed
        for entry in log.replay(after=landed):
            _, batch = self.decode_normalise(entry.signal, "protobuf", entry.payload, count=False)
            group.append(batch)
            positions.append(entry.seq)
            rows += batch.rows
            last = entry.seq
            replayed += 1
            if rows >= MAX_FLUSH_ROWS:
                lander.land_safely(group, log_seq=last, positions=positions)
                group, positions, rows = [], [], 0
        if group:
            lander.land_safely(group, log_seq=last, positions=positions)
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
            comptroller.analytics.ReaderUnavailable: The PostgreSQL ledger does not answer.
        """
        analytics.check_read_only(sql)
        if self.con is None:
            reader = self._ledger_reader()
            self._catch_up()
            return reader.query(sql, params)
        self._catch_up()
        return analytics.run_read_only(self.con, sql, params, limits=self.query_limits)

    def _ledger_reader(self) -> analytics.PgReader:
        """The PostgreSQL ledger's reader of `/api/query` (a pool of `query_concurrency`
        read-only sessions), opened at the first query."""
        with self._pg_reader_lock:
            if self._pg_reader is None:
                assert self.ledger_url is not None
                try:
                    self._pg_reader = analytics.PgReader(
                        self.ledger_url, limits=self.query_limits, pool=self.query_concurrency
                    )
                except ConfigError as exc:
                    raise analytics.ReaderUnavailable(str(exc)) from exc
            return self._pg_reader

    def _catch_up(self) -> None:
        """Reads see every request acknowledged before them, and its budget events."""
        if self.pipeline.wait_landed(_READ_WAIT_S):
            self.pipeline.lander.flush_budget_events()

    def budget_state(self, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Today's spend per budget key, as JSON-ready dicts (a PostgreSQL ledger's from its
        rollups and the day's usage rows, `budget_state_pg`)."""
        self._catch_up()
        if self._pg_read is not None:
            from comptroller.analytics._pg_budget import budget_state_pg

            try:
                pg_states = budget_state_pg(
                    self._pg_read,
                    now=now,
                    timezone=self.timezone,
                    attribution_budgets=self.attribution_budgets,
                )
            except Exception:
                # A session the server closed (a restart, a failover): once more on a new
                # one. (Only the budget lane's thread uses this connection.)
                with contextlib.suppress(Exception):
                    self._pg_read.close()
                self._pg_read = self._pg_open_read()
                pg_states = budget_state_pg(
                    self._pg_read,
                    now=now,
                    timezone=self.timezone,
                    attribution_budgets=self.attribution_budgets,
                )
            return [_jsonable(asdict(state)) for state in pg_states]
        assert self.con is not None
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
        if self.con is not None:
            # The data is in the WAL already; a checkpoint is a courtesy.
            with contextlib.suppress(Exception):
                self.con.execute("CHECKPOINT").fetchall()
        # (closing the PostgreSQL lander's session releases the collector id's lock)
        self._close_stores()

    def ledger_health(self) -> dict[str, Any]:
        """The ledger's part of `/health`: its kind, where it is, and the landed position
        (the ingest-log sequence number of the newest request committed in it)."""
        out: dict[str, Any] = {
            "kind": "postgresql" if self.ledger_url is not None else "duckdb",
            "landed_position": self.pipeline.landed_seq,
            "accepted_position": self.pipeline.accepted_seq,
        }
        if self.ledger_url is not None:
            out["url"] = redacted_url(self.ledger_url)
            out["collector_id"] = self.collector_id
        else:
            out["path"] = str(self.db_path)
        return out


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
