"""Where alert deliveries are kept: `alert_deliveries` of the ledger, and the alerts of the
last day still waiting for an outcome there (queued when their process stopped)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from comptroller.collector._notify import ALERT_COLUMNS, Alert, Delivery, Notifier, alerts_of

if TYPE_CHECKING:
    import duckdb

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
