"""Where alert deliveries are kept: `alert_deliveries` of the ledger, and the alerts of the
last day still waiting for an outcome there (queued when their process stopped).

A DuckDB ledger has one collector (`AlertLog`). A PostgreSQL ledger has a fleet
(`PgAlertLog`): each collector records its outcomes in the shared table, and before it
POSTs an alert to a webhook it claims the pair in `alert_claims` (`INSERT … ON CONFLICT`,
schema v3): so of two collectors that both find an alert unanswered at their start, or one
that starts while another is still retrying it, one sends it. A claim without an outcome
may be taken over after `ALERT_CLAIM_TTL_S` (its claimer died mid-send), or at once by the
same collector id started again (the id's lock says its predecessor is gone).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from comptroller.collector._notify import (
    ALERT_COLUMNS,
    PG_ALERT_COLUMNS,
    Alert,
    Delivery,
    Notifier,
    alerts_of,
)

if TYPE_CHECKING:
    import duckdb
    from adbc_driver_postgresql.dbapi import Connection as PgConnection

    from comptroller.config import AlertSettings

PENDING_WINDOW = dt.timedelta(days=1)
"""How far back an alert without an outcome is sent again on start."""


class AlertLog:
    """Records deliveries through its own cursor on the landing connection's database."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        # A cursor is a connection of its own to the same database: the notifier's thread
        # writes through it while the landing thread writes through `con`.
        self._cursor = con.cursor()
        self._lock = threading.Lock()

    def record(self, delivery: Delivery) -> None:
        """Keep the outcome of one alert at one webhook (the last outcome wins)."""
        with self._lock:
            self._cursor.execute(
                "INSERT OR REPLACE INTO alert_deliveries (event_id, webhook, kind, status, "
                "attempts, http_status, error, first_attempt_ts, last_attempt_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, to_timestamp(?), to_timestamp(?))",
                [
                    delivery.event_id,
                    delivery.webhook,
                    delivery.kind,
                    delivery.status,
                    delivery.attempts,
                    delivery.http_status,
                    delivery.error,
                    delivery.first_ts,
                    delivery.last_ts,
                ],
            ).fetchall()

    def pending(
        self, webhooks: Sequence[str], *, now: dt.datetime | None = None
    ) -> tuple[list[Alert], set[tuple[str, str]]]:
        """Alert-worthy events of the last day some webhook has no outcome for, and the
        (event id, webhook) pairs that have one (not to be sent again)."""
        if not webhooks:
            return [], set()
        since = (now or dt.datetime.now(dt.UTC)) - PENDING_WINDOW
        found: list[Alert] = []
        with self._lock:
            for table in ("budget_events", "circuit_events"):
                cursor = self._cursor.execute(
                    f"SELECT {ALERT_COLUMNS[table]} FROM {table} e WHERE e.ts >= ? AND "
                    "(SELECT count(*) FROM alert_deliveries d WHERE d.event_id = e.event_id) < ? "
                    "ORDER BY e.ts",
                    [since, len(webhooks)],
                )
                names = [d[0] for d in cursor.description or ()]
                rows: list[dict[str, Any]] = [
                    dict(zip(names, row, strict=True)) for row in cursor.fetchall()
                ]
                found.extend(alerts_of(table, rows))
            done = {
                (str(event_id), str(webhook))
                for event_id, webhook in self._cursor.execute(
                    "SELECT event_id, webhook FROM alert_deliveries WHERE last_attempt_ts >= ?",
                    [since - PENDING_WINDOW],
                ).fetchall()
            }
        return found, done

    def close(self) -> None:
        with self._lock:
            self._cursor.close()


def start_notifier(con: duckdb.DuckDBPyConnection, settings: AlertSettings) -> Notifier | None:
    """A notifier recording into `con`'s database, with the alerts its predecessor left
    queued sent again; None without webhooks."""
    if not settings.webhooks:
        return None
    log = AlertLog(con)
    notifier = Notifier(settings, record=log.record)
    pending, done = log.pending([hook.label for hook in notifier.webhooks])
    if pending:
        notifier.offer(pending, skip=done)
    notifier.on_close(log.close)
    return notifier


_log = logging.getLogger("comptroller.collector.alerts")
_TS = pa.timestamp("us", tz="UTC")


class PgAlertLog:
    """Records deliveries in a PostgreSQL ledger and claims each send for this collector.

    Args:
        connect: Opens a session on the ledger (this log's own: the notifier's thread uses
            it); called again when the server ended the session.
        collector_id: This collector's id (the claims' owner).
    """

    def __init__(self, connect: Callable[[], PgConnection], collector_id: str) -> None:
        from comptroller.analytics._pg_schema import ALERT_CLAIM_TTL_S

        self._connect = connect
        self.collector_id = collector_id
        self._ttl_s = ALERT_CLAIM_TTL_S
        self._lock = threading.Lock()
        self._con: PgConnection | None = connect()

    def _run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement in a transaction of its own; once more on a new session when the
        first fails (a server restart ended the old one)."""
        with self._lock:
            for attempt in (1, 2):
                if self._con is None:
                    self._con = self._connect()
                con = self._con
                cur = con.cursor()
                try:
                    cur.execute(sql, params)
                    rows = list(cur.fetchall()) if cur.description else []
                    con.commit()
                    return rows
                except Exception:
                    with contextlib.suppress(Exception):
                        con.rollback()
                    if attempt == 2:
                        raise
                    with contextlib.suppress(Exception):
                        con.close()
                    self._con = None
                finally:
                    with contextlib.suppress(Exception):
                        cur.close()
        raise AssertionError("unreachable")

    def record(self, delivery: Delivery) -> None:
        """Keep the outcome of one alert at one webhook (the last outcome wins)."""
        values = pa.record_batch(
            [
                pa.array([delivery.event_id], pa.string()),
                pa.array([delivery.webhook], pa.string()),
                pa.array([delivery.kind], pa.string()),
                pa.array([delivery.status], pa.string()),
                pa.array([delivery.attempts], pa.int32()),
                pa.array([delivery.http_status], pa.int32()),
                pa.array([delivery.error], pa.string()),
                pa.array([_instant(delivery.first_ts)], _TS),
                pa.array([_instant(delivery.last_ts)], _TS),
            ],
            names=[f"p{i}" for i in range(9)],
        )
        self._run(
            "INSERT INTO alert_deliveries (event_id, webhook, kind, status, attempts, "
            "http_status, error, first_attempt_ts, last_attempt_ts) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (event_id, webhook) DO UPDATE SET kind = excluded.kind, "
            "status = excluded.status, attempts = excluded.attempts, "
            "http_status = excluded.http_status, error = excluded.error, "
            "first_attempt_ts = excluded.first_attempt_ts, "
            "last_attempt_ts = excluded.last_attempt_ts",
            values,
        )

    def claim(self, alert: Alert, webhook: str) -> bool:
        """Whether this collector is the one to send `alert` to `webhook` now: True when it
        claimed the pair (first, or taking over its own claim or a stale one with no
        outcome), False when another collector holds it or an outcome is recorded."""
        values = pa.record_batch(
            [
                pa.array([alert.event_id], pa.string()),
                pa.array([webhook], pa.string()),
                pa.array([self.collector_id], pa.string()),
                pa.array([float(self._ttl_s)], pa.float64()),
            ],
            names=["p0", "p1", "p2", "p3"],
        )
        rows = self._run(
            "INSERT INTO alert_claims AS c (event_id, webhook, collector_id) "
            "SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM alert_deliveries AS d "
            "WHERE d.event_id = $1 AND d.webhook = $2) "
            "ON CONFLICT (event_id, webhook) DO UPDATE "
            "SET collector_id = excluded.collector_id, claimed_at = now() "
            "WHERE (c.collector_id = excluded.collector_id "
            "OR c.claimed_at < now() - make_interval(secs => $4::FLOAT8)) "
            "AND NOT EXISTS (SELECT 1 FROM alert_deliveries AS d "
            "WHERE d.event_id = c.event_id AND d.webhook = c.webhook) "
            "RETURNING c.event_id",
            values,
        )
        return bool(rows)

    def pending(
        self, webhooks: Sequence[str], *, now: dt.datetime | None = None
    ) -> tuple[list[Alert], set[tuple[str, str]]]:
        """`AlertLog.pending` of the PostgreSQL ledger: alert-worthy events of the last day
        some webhook has no outcome for, and the pairs that have one."""
        if not webhooks:
            return [], set()
        since = (now or dt.datetime.now(dt.UTC)) - PENDING_WINDOW
        found: list[Alert] = []
        for table in ("budget_events", "circuit_events"):
            cur_rows, names = self._select(
                f"SELECT {PG_ALERT_COLUMNS[table]} FROM {table} AS e WHERE e.ts >= $1 AND "
                "(SELECT count(*) FROM alert_deliveries AS d WHERE d.event_id = e.event_id) "
                "< $2 ORDER BY e.ts, e.event_id",
                pa.record_batch(
                    [pa.array([since], _TS), pa.array([len(webhooks)], pa.int64())],
                    names=["p0", "p1"],
                ),
            )
            rows = [dict(zip(names, row, strict=True)) for row in cur_rows]
            found.extend(alerts_of(table, rows))
        done = {
            (str(event_id), str(webhook))
            for event_id, webhook in self._run(
                "SELECT event_id, webhook FROM alert_deliveries WHERE last_attempt_ts >= $1",
                pa.record_batch([pa.array([since - PENDING_WINDOW], _TS)], names=["p0"]),
            )
        }
        return found, done

    def _select(self, sql: str, params: Any) -> tuple[list[tuple[Any, ...]], list[str]]:
        with self._lock:
            if self._con is None:
                self._con = self._connect()
            con = self._con
            cur = con.cursor()
            try:
                cur.execute(sql, params)
                names = [d[0] for d in cur.description or ()]
                rows = list(cur.fetchall())
                con.commit()
                return rows, names
            except Exception:
                with contextlib.suppress(Exception):
                    con.rollback()
                raise
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                with contextlib.suppress(Exception):
                    self._con.close()
                self._con = None


def _instant(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def start_pg_notifier(
    connect: Callable[[], PgConnection], collector_id: str, settings: AlertSettings
) -> Notifier | None:
    """`start_notifier` of a collector landing into PostgreSQL: outcomes recorded in the
    ledger's `alert_deliveries`, each send claimed for this collector first, and the
    alerts of the last day no webhook answered yet sent again (by one collector of the
    fleet: the claim decides). None without webhooks."""
    if not settings.webhooks:
        return None
    log = PgAlertLog(connect, collector_id)
    try:
        notifier = Notifier(settings, record=log.record, claim=log.claim)
    except BaseException:
        log.close()
        raise
    notifier.on_close(log.close)
    try:
        pending, done = log.pending([hook.label for hook in notifier.webhooks])
    except Exception:
        _log.exception("comptroller: alerts left unanswered could not be looked up")
        return notifier
    if pending:
        notifier.offer(pending, skip=done)
    return notifier
