"""Landing into a PostgreSQL ledger: the DuckDB lander's batches, exactly once per collector.

Any number of collectors land into one PostgreSQL database at once. Each has an id, and each
request it accepted has a position in its ingest log (`collector/_ingest_log.py`). One
landing is one transaction that

1. takes the collector's advisory lock and reads its high-water mark (the highest position
   in `ledger_positions`); the batches at or below it are skipped: a replay after a crash
   lands nothing twice;
2. bulk-copies each table's Arrow rows into a temporary staging table (ADBC binary COPY,
   `cursor.adbc_ingest`) and inserts them into the ledger with `ON CONFLICT DO NOTHING`
   on their ids: the same row sent twice, to this collector or another, lands once;
3. adds the rows the insert actually added (`RETURNING`, never a duplicate it skipped) to
   the rollups `llm_usage_daily`, `llm_budget_daily` and `llm_usage_hourly` with
   `INSERT … ON CONFLICT DO UPDATE` (the sums of the batch added to the stored ones), so a
   rollup's sums always equal the raw rows' sums;
4. records `(collector_id, position)` of the landed range in `ledger_positions`,

and commits. A crash anywhere before the commit leaves nothing of the landing; after it,
the positions say it landed. Rows are inserted in key order and the tables in one fixed
order, so concurrent landers wait for each other's row locks instead of deadlocking (a
deadlock or serialisation failure is retried a few times anyway).

Derived usage rows (third-party inference spans, table `derive`) follow the DuckDB
lander's counting rules, decided with the same code (`collector._land.decide`) over the
relations of recent traces this collector landed; a derived row made redundant later is
deleted and its sums taken off the rollups.

Budget crossings (warnings, the cap exceeded) are recorded into `budget_events` by the
rules the DuckDB ledger and the control plane share (`comptroller.budget_alerts`: the
key's `WarningPolicy.for_key`, `crossings`, `warning_event_id`), from the budget state of
the rollups (`analytics._pg_budget.budget_state_pg`). They are looked for after a landing
commits, in a transaction of their own (at most every `budget_events_every_s`; the idle
writer's `flush_budget_events` makes up skipped checks): each event's id is the same in
every process, so of several collectors (and the control plane) raising one crossing, one
records it (`ON CONFLICT DO NOTHING … RETURNING`) and only that one alerts. The budgets by
attribution (`[[control.attribution_budgets]]`) and this hour's spend anomalies are looked
for in the same pass, with the rules of the DuckDB ledger (`analytics.budget_crossings`,
`analytics._anomaly`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from comptroller.analytics._budget import BudgetEvent, BudgetState, budget_crossings
from comptroller.analytics._delta import DELTA_INPUTS
from comptroller.analytics._pg_budget import budget_state_pg
from comptroller.analytics._pg_schema import (
    STORED,
    arrow_pg_type,
    conflict_key,
    pg_select_expr,
)
from comptroller.analytics._tables import LANDED
from comptroller.analytics._unpriced import unpriced_sql
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector._land import LandResult, _Relations, decide, land_without_refused
from comptroller.collector._normalise import Batch
from comptroller.collector._notify import Alert, alerts_of, anomaly_alert, budget_event_alert
from comptroller.collector._resources import resource_id, split_resources
from comptroller.errors import ComptrollerError, ConfigError

if TYPE_CHECKING:
    from adbc_driver_postgresql.dbapi import Connection, Cursor

    from comptroller.config import AttributionBudget

_log = logging.getLogger("comptroller.collector")

ROLLUP_TIMEZONE_KEY: Final = "rollup_timezone"
DATABASE_ID_KEY: Final = "database_id"
_ORDER: Final = (
    "spans",
    "llm_usage",
    "derive",
    "circuit_events",
    "profile_events",
    "budget_events",
    "rejected_records",
)
"""The order tables land in (one order for every lander: no lock cycles)."""
_RETRIED: Final = frozenset({"40P01", "40001"})
"""Deadlock, serialisation failure: the landing is retried."""
_DATA_CLASSES: Final = ("22", "23")
"""SQLSTATE classes of a row's values refused (out of range, not null, bad JSON)."""
_DAILY_KEYS: Final = ("day", "tenant", "org", "context", "purpose", "provider", "model")
_BUDGET_KEYS: Final = ("day", "tenant", "context", "purpose")
_HOURLY_KEYS: Final = ("hour", "tenant", "context", "purpose")
_TOKENS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


class LedgerError(ComptrollerError):
    """The PostgreSQL ledger refused a landing for a reason retrying will not fix."""


@dataclass(kw_only=True)
class PgLandResult(LandResult):
    """What one landing did: the DuckDB lander's `LandResult`, and the positions."""

    skipped_positions: list[int] = field(default_factory=list)
    """Positions already landed (by this collector before a crash): not landed again."""
    landed_positions: list[int] = field(default_factory=list)


def _zone_literal(timezone: str) -> str:
    try:
        ZoneInfo(timezone)
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {timezone!r} (use an IANA name such as 'UTC')"
        ) from exc
    return "'" + timezone.replace("'", "''") + "'"


def _cap_newer(d: str, n: str) -> str:
    # The cap of the latest row wins (rows of the very same instant: either).
    return (
        f"{n}.budget_cap_ts IS NOT NULL AND ({d}.budget_cap_ts IS NULL"
        f" OR {n}.budget_cap_ts >= {d}.budget_cap_ts)"
    )


def rollup_upserts(source: str, timezone: str, *, sign: int = 1) -> list[str]:
    """The statements adding the rows of `source` (llm_usage columns, at least
    `DELTA_INPUTS`) to the three rollups, days and hours cut in `timezone`.

    The rows are summed once per rollup group into `_delta_daily` (a temporary table), which
    is added to `llm_usage_daily` and, summed per budget key, to `llm_budget_daily` (as
    DuckDB derives one from the other); `llm_usage_hourly` is summed from the rows.

    With `sign=-1` the rows' counts and sums are taken off instead (rows deleted); the
    latest cap and the first and last instants are left as they were, and groups left
    without calls are removed.
    """
    zone = _zone_literal(timezone)
    local = f"(u.ts AT TIME ZONE {zone})"
    unpriced = unpriced_sql("u.")
    s = "" if sign > 0 else "-"
    counts = {
        "calls": f"{s}count(*)",
        "errors": f"{s}count(*) FILTER (WHERE u.outcome <> 'ok')",
        "estimated_calls": f"{s}count(*) FILTER (WHERE u.estimated)",
        "unpriced_calls": f"{s}count(*) FILTER (WHERE {unpriced})",
    }
    tokens = {name: f"{s}coalesce(sum(u.{name}), 0)::BIGINT" for name in _TOKENS}
    cost = f"{s}coalesce(sum(u.cost_usd), 0)"
    keys = {
        "tenant": "coalesce(u.tenant, '')",
        "org": "coalesce(u.org, '')",
        "context": "coalesce(u.context, '')",
        "purpose": "coalesce(u.purpose, '')",
        "provider": "coalesce(u.provider, '')",
        "model": "coalesce(u.response_model, u.request_model, '')",
    }
    daily = {
        "day": f"{local}::DATE",
        **keys,
        **counts,
        **tokens,
        "cost_usd": cost,
        # The cap of the group's latest row that carries one.
        # The cap of the group's latest row that carries one (of two at the same
        # microsecond: the larger), in one pass: arrays compare element by element.
        "budget_cap_usd": "(max(ARRAY[extract(epoch FROM u.ts), u.budget_cap_usd]) "
        "FILTER (WHERE u.budget_cap_usd IS NOT NULL))[2]",
        "budget_cap_ts": "max(u.ts) FILTER (WHERE u.budget_cap_usd IS NOT NULL)",
        "first_ts": "min(u.ts)",
        "last_ts": "max(u.ts)",
    }
    model_c = '(u.model COLLATE "C")'
    budget = {
        "day": "u.day",
        "tenant": "u.tenant",
        "context": "u.context",
        "purpose": "u.purpose",
        "spent_usd": "sum(u.cost_usd)",
        "budget_cap_usd": "(array_agg(u.budget_cap_usd ORDER BY u.budget_cap_ts DESC) "
        "FILTER (WHERE u.budget_cap_usd IS NOT NULL))[1]",
        "budget_cap_ts": "max(u.budget_cap_ts)",
        **{name: f"sum(u.{name})::BIGINT" for name in counts},
        "unpriced_models": f"coalesce(array_agg(DISTINCT {model_c} ORDER BY {model_c}) "
        "FILTER (WHERE u.unpriced_calls > 0), '{}')",
        "last_ts": "max(u.last_ts)",
    }
    hourly = {
        "hour": f"date_trunc('hour', {local})",
        "tenant": keys["tenant"],
        "context": keys["context"],
        "purpose": keys["purpose"],
        "calls": counts["calls"],
        "errors": counts["errors"],
        "unpriced_calls": counts["unpriced_calls"],
        "input_tokens": tokens["input_tokens"],
        "output_tokens": tokens["output_tokens"],
        "cost_usd": cost,
    }

    def upsert(
        table: str,
        columns: dict[str, str],
        keys: tuple[str, ...],
        added: tuple[str, ...],
        src: str,
        grouped: bool = True,
    ) -> str:
        names = ", ".join(columns)
        group = ", ".join(str(i + 1) for i in range(len(keys)))
        sets = [f"{m} = d.{m} + EXCLUDED.{m}" for m in added]
        if sign > 0:
            if "budget_cap_usd" in columns:
                newer = _cap_newer("d", "EXCLUDED")
                sets += [
                    f"budget_cap_usd = CASE WHEN {newer} THEN EXCLUDED.budget_cap_usd "
                    "ELSE d.budget_cap_usd END",
                    f"budget_cap_ts = CASE WHEN {newer} THEN EXCLUDED.budget_cap_ts "
                    "ELSE d.budget_cap_ts END",
                ]
            if "first_ts" in columns:
                sets.append("first_ts = least(d.first_ts, EXCLUDED.first_ts)")
            if "unpriced_models" in columns:
                sets.append(
                    'unpriced_models = ARRAY(SELECT DISTINCT m COLLATE "C" FROM '
                    "unnest(d.unpriced_models || EXCLUDED.unpriced_models) AS m ORDER BY 1)"
                )
            if "last_ts" in columns:
                sets.append("last_ts = greatest(d.last_ts, EXCLUDED.last_ts)")
        # Groups in key order: concurrent landers lock the rows they share in one order.
        return (
            f"INSERT INTO {table} AS d ({names}) "
            f"SELECT {', '.join(columns.values())} FROM {src} AS u "
            + (f"GROUP BY {group} " if grouped else "")
            + f"ORDER BY {group} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(sets)}"
        )

    daily_added = ("calls", "errors", "estimated_calls", "unpriced_calls", *_TOKENS, "cost_usd")
    budget_added = ("spent_usd", "calls", "errors", "estimated_calls", "unpriced_calls")
    hourly_added = (
        "calls",
        "errors",
        "unpriced_calls",
        "input_tokens",
        "output_tokens",
        "cost_usd",
    )
    names = ", ".join(daily)
    statements = [
        "CREATE TEMP TABLE IF NOT EXISTS _delta_daily ON COMMIT DELETE ROWS AS "
        f"SELECT {names} FROM llm_usage_daily WITH NO DATA",
        "DELETE FROM _delta_daily",  # (a landing may add and take off)
        f"INSERT INTO _delta_daily ({names}) SELECT {', '.join(daily.values())} "
        f"FROM {source} AS u GROUP BY {', '.join(str(i + 1) for i in range(len(_DAILY_KEYS)))}",
        upsert(
            "llm_usage_daily",
            {name: f"u.{name}" for name in daily},
            _DAILY_KEYS,
            daily_added,
            "_delta_daily",
            grouped=False,
        ),
        upsert("llm_budget_daily", budget, _BUDGET_KEYS, budget_added, "_delta_daily"),
        upsert("llm_usage_hourly", hourly, _HOURLY_KEYS, hourly_added, source),
    ]
    if sign < 0:
        # Groups left without calls go, as a recompute would leave them out (only the
        # days and hours of the rows taken off are looked at).
        days = f"SELECT DISTINCT {local}::DATE FROM {source} AS u"
        hours = f"SELECT DISTINCT date_trunc('hour', {local}) FROM {source} AS u"
        statements += [
            f"DELETE FROM llm_usage_daily WHERE calls <= 0 AND day IN ({days})",
            f"DELETE FROM llm_budget_daily WHERE calls <= 0 AND day IN ({days})",
            f"DELETE FROM llm_usage_hourly WHERE calls <= 0 AND hour IN ({hours})",
        ]
    return statements


def rebuild_rollups_pg(con: Connection, *, timezone: str = "UTC") -> int:
    """Recompute the three rollups from `llm_usage` (own transaction; commits `con`).

    Returns:
        The number of `llm_usage_daily` rows written.
    """
    cur = con.cursor()
    try:
        for table in ("llm_usage_daily", "llm_budget_daily", "llm_usage_hourly"):
            cur.execute(f"DELETE FROM {table}")
        for statement in rollup_upserts("llm_usage", timezone):
            cur.execute(statement)
        _set_meta(cur, ROLLUP_TIMEZONE_KEY, timezone)
        cur.execute("SELECT count(*) FROM llm_usage_daily")
        (count,) = cur.fetchone() or (0,)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        cur.close()
    return int(count)


ROLLUP_TABLES: Final = ("llm_usage_daily", "llm_budget_daily", "llm_usage_hourly")


def lock_rollups(cur: Cursor) -> None:
    """Hold the rollups against every lander's upserts until the caller's transaction ends.

    `SHARE ROW EXCLUSIVE` conflicts with the `ROW EXCLUSIVE` lock a landing's rollup
    upserts (`INSERT … ON CONFLICT`) take, and with itself, but not with reads. Taken, it
    waits for each landing that has already added to the rollups to commit (so its rows are
    visible to the caller's next statements, READ COMMITTED), and a landing that has not
    yet added waits for the caller's commit (its rows are invisible to the caller, and its
    delta is added on top of what the caller wrote). Either way a recompute of the rollups
    from `llm_usage` done under this lock misses no landing and counts none twice.
    """
    cur.execute(f"LOCK TABLE {', '.join(ROLLUP_TABLES)} IN SHARE ROW EXCLUSIVE MODE")


def rebuild_rollup_days_pg(cur: Cursor, days: Sequence[dt.date], *, timezone: str) -> int:
    """Recompute the three rollups' rows of the local `days` from `llm_usage`, in the
    caller's transaction (which should hold `lock_rollups`; nothing is committed).

    Returns:
        The number of `llm_usage_daily` rows those days hold afterwards.
    """
    if not days:
        return 0
    zone = ZoneInfo(timezone)
    _zone_literal(timezone)
    ordered = sorted(set(days))
    bounds = pa.table(
        {
            "day": pa.array(ordered, pa.date32()),
            "lo": pa.array(
                [dt.datetime.combine(d, dt.time(), tzinfo=zone) for d in ordered],
                pa.timestamp("us", tz="UTC"),
            ),
            "hi": pa.array(
                [
                    dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), tzinfo=zone)
                    for d in ordered
                ],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    cur.execute("DROP TABLE IF EXISTS _rebuild_days")
    cur.execute(
        "CREATE TEMP TABLE _rebuild_days (day DATE, lo TIMESTAMPTZ, hi TIMESTAMPTZ) ON COMMIT DROP"
    )
    cur.adbc_ingest("_rebuild_days", bounds, mode="append", temporary=True)
    cur.execute("DELETE FROM llm_usage_daily WHERE day IN (SELECT day FROM _rebuild_days)")
    cur.execute("DELETE FROM llm_budget_daily WHERE day IN (SELECT day FROM _rebuild_days)")
    cur.execute(
        "DELETE FROM llm_usage_hourly AS h USING _rebuild_days AS d "
        "WHERE h.hour >= d.day AND h.hour < d.day + 1"
    )
    # The days' rows, found by `ts` ranges (the llm_usage_ts index), summed as a landing
    # sums its rows: the deleted groups are inserted again, none conflicts.
    source = (
        "(SELECT l.* FROM llm_usage AS l JOIN _rebuild_days AS r ON l.ts >= r.lo AND l.ts < r.hi)"
    )
    for statement in rollup_upserts(source, timezone):
        cur.execute(statement)
    cur.execute("SELECT count(*) FROM llm_usage_daily WHERE day IN (SELECT day FROM _rebuild_days)")
    (count,) = cur.fetchone() or (0,)
    return int(count)


def _set_meta(cur: Cursor, key: str, value: str) -> None:
    cur.execute(
        "INSERT INTO comptroller_meta (key, value) VALUES ($1, $2) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        [key, value],
    )


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return str(state) if state else None


class PgLander:
    """Lands batches into a PostgreSQL ledger, exactly once per (collector, position).

    Args:
        con: An ADBC connection to the migrated ledger (`analytics._pg_schema.connect_pg`),
            used by this lander alone.
        collector_id: This collector's id, stable across its restarts and unique in the
            fleet (its ingest log's positions are recorded under it).
        timezone: Time zone of the rollups' days; every collector of a ledger must use the
            same one.
        rollup: Keep the rollups current in each landing.
        max_traces: Bound on the spans whose relations are kept for the counting rules.
        lookback: How far back the relations are rebuilt from the ledger on start.
        retries: Times a landing that met a deadlock or a serialisation failure is run
            again before the error goes to the caller (whose own retry is the pipeline's).
        budget_events_every_s: Look for budget crossings after a landing at most this
            often (0: after every landing that added usage); `flush_budget_events` makes
            up skipped checks.
        warnings: When budgets warn (None: the default policy, as `record_budget_events`).
        on_alerts: Told, after each commit, of the alert-worthy events this lander newly
            recorded: budget crossings it found, and budget and circuit events of the
            control plane it landed (not those another collector landed first).
        clock: Monotonic seconds (injectable for tests).
        reconnect: Opens a new connection to the ledger (the collector's claims its id on
            it again) when the server closed this one: a PostgreSQL restart or a failover
            costs a retried landing, not a collector stuck on a dead session. None: the
            error goes to the caller each time.

    Raises:
        ConfigError: The ledger's rollups are cut in another time zone.
    """

    def __init__(
        self,
        con: Connection,
        *,
        collector_id: str,
        timezone: str = "UTC",
        rollup: bool = True,
        max_traces: int = 200_000,
        lookback: dt.timedelta = dt.timedelta(hours=1),
        retries: int = 5,
        budget_events_every_s: float = 1.0,
        warnings: WarningPolicy | None = None,
        on_alerts: Callable[[list[Alert]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reconnect: Callable[[], Connection] | None = None,
        attribution_budgets: Sequence[AttributionBudget] = (),
    ) -> None:
        if not collector_id or len(collector_id) > 200:
            raise ConfigError("collector_id must be 1 to 200 characters")
        self.attribution_budgets = tuple(attribution_budgets)
        """The budgets by attribution whose crossings are recorded with the others."""
        self.con = con
        self.collector_id = collector_id
        self.timezone = timezone
        self.rollup = rollup
        self.max_traces = max_traces
        self.lookback = lookback
        self.retries = retries
        self.lock = threading.Lock()
        self.reconnect = reconnect
        """Opens a new connection when the server lost this one (None: errors stay)."""
        self.resource_id: Callable[[str], int] = resource_id
        self.timings: dict[str, float] = {"stage": 0.0, "insert": 0.0, "rollup": 0.0, "commit": 0.0}
        self._staged: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self._relations = _Relations()
        self.budget_events_every_s = budget_events_every_s
        self.warnings = warnings
        self.on_alerts = on_alerts
        self._clock = clock
        self._budget_checked_at = -math.inf
        self.budget_events_pending = True
        """Usage may have landed since the last look for budget crossings (true on start:
        a crash may have come between a landing and its look)."""
        self._zone = _zone_literal(timezone)
        self._claim_zone()
        self._prime()

    # --- the store's interface (as the DuckDB `Lander`) ---------------------------------
    def landed_position(self) -> int:
        """The highest ingest-log position this collector landed (0: none)."""
        with self.lock:
            return self._landed_position()

    def _landed_position(self) -> int:
        cur = self.con.cursor()
        try:
            cur.execute(
                "SELECT coalesce(max(position), 0) FROM ledger_positions WHERE collector_id = $1",
                [self.collector_id],
            )
            (found,) = cur.fetchone() or (0,)
            self.con.commit()
        finally:
            cur.close()
        return int(found)

    def landed_log_seq(self) -> int:
        """`landed_position` (the DuckDB lander's name for it)."""
        return self.landed_position()

    def database_id(self) -> str:
        """A random id given to the ledger when a collector first opens it."""
        with self.lock:
            return self._database_id()

    def _database_id(self) -> str:
        cur = self.con.cursor()
        try:
            cur.execute(
                "INSERT INTO comptroller_meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO NOTHING",
                [DATABASE_ID_KEY, uuid.uuid4().hex],
            )
            cur.execute("SELECT value FROM comptroller_meta WHERE key = $1", [DATABASE_ID_KEY])
            (found,) = cur.fetchone() or ("",)
            self.con.commit()
        finally:
            cur.close()
        return str(found)

    def flush_budget_events(self) -> None:
        """Record the budget crossings that skipped checks left pending (own transaction)."""
        with self.lock:
            if self.budget_events_pending:
                try:
                    self._record_budget_events()
                except Exception:
                    # A session the server ended while the writer idled (nothing landed since
                    # to notice it): once more on a new one, else the error stands.
                    if not self._reconnect_if_lost():
                        raise
                    self._record_budget_events()

    def _reconnect_if_lost(self) -> bool:
        """Replace a connection the server closed (restarted, or ended the session) with a
        new one from `reconnect`; True when replaced.

        Raises:
            Exception: `reconnect` failed (the caller's retry tries again later).
        """
        if self.reconnect is None:
            return False
        try:
            cur = self.con.cursor()
            try:
                cur.execute("SELECT 1")
                cur.fetchall()
            finally:
                cur.close()
            self.con.rollback()
            return False  # alive: the error was something else
        except Exception:
            pass
        with contextlib.suppress(Exception):
            self.con.close()
        self._staged.clear()  # the session's temporary tables went with it
        self.con = self.reconnect()
        _log.warning("comptroller: the PostgreSQL ledger's connection was lost; reconnected")
        return True

    def record_budget_events(self, *, now: dt.datetime | None = None) -> list[BudgetEvent]:
        """Look for today's budget crossings now and record the new ones (own transaction).

        Returns:
            The events this call recorded (not those recorded before, by anyone).
        """
        with self.lock:
            return self._record_budget_events(now=now)

    def _after_landing(self, result: PgLandResult) -> None:
        """After a landing committed: its budget crossings, if it is time to look."""
        if result.derived or result.inserted.get("llm_usage") or result.superseded:
            self.budget_events_pending = True
        if (
            self.budget_events_pending
            and self._clock() - self._budget_checked_at >= self.budget_events_every_s
        ):
            try:
                self._record_budget_events()
            except Exception:  # the landing stands; the idle writer's flush tries again
                _log.exception("comptroller: budget crossings were not recorded")

    def _record_budget_events(self, *, now: dt.datetime | None = None) -> list[BudgetEvent]:
        """Record what the DuckDB `Lander` records after landing: the crossings of the profile
        budgets and of the budgets by attribution, then this hour's spend anomalies, each once
        fleet-wide (`ON CONFLICT DO NOTHING … RETURNING`: the collector that inserts an event
        is the one that alerts)."""
        from comptroller.analytics._pg_budget import record_anomaly_events_pg

        stamp = now or dt.datetime.now(dt.UTC)
        states = budget_state_pg(
            self.con,
            now=stamp,
            timezone=self.timezone,
            attribution_budgets=self.attribution_budgets,
        )
        recorded: list[BudgetEvent] = []
        if states:
            cur = self.con.cursor()
            try:
                recorded = _insert_budget_events(
                    cur, states, stamp=stamp, timezone=self.timezone, policy=self.warnings
                )
                self.con.commit()
            except BaseException:
                self._rollback()
                raise
            finally:
                cur.close()
        # The crossings' alerts go now: a failure below leaves the look pending, and the
        # next one finds these recorded (it would not alert them again).
        self._alert([a for event in recorded if (a := budget_event_alert(event)) is not None])
        anomalies = record_anomaly_events_pg(self.con, now=stamp, timezone=self.timezone)
        self._alert([a for anomaly in anomalies if (a := anomaly_alert(anomaly)) is not None])
        self._budget_checked_at = self._clock()
        self.budget_events_pending = False
        return recorded

    def _alert(self, alerts: list[Alert]) -> None:
        if alerts and self.on_alerts is not None:
            self._send_alerts(alerts)

    def land(
        self,
        batches: Sequence[Batch],
        *,
        positions: Sequence[int] | None = None,
        log_seq: int | None = None,
    ) -> PgLandResult:
        """Land the batches not landed yet, in one transaction (all or nothing).

        Args:
            batches: What to land, in ingest-log order.
            positions: The ingest-log position of each batch (ascending). A batch whose
                position is at or below the collector's high-water mark is skipped.
            log_seq: Instead of `positions`: the position of the last batch, for a group
                landed whole as the DuckDB lander's `log_seq` (skipped whole when at or below
                the mark).

        Raises:
            LedgerError: Positions not ascending, or not one per batch.
        """
        if positions is None:
            if log_seq is None:
                raise LedgerError("land needs the ingest-log positions of the batches")
            positions = [log_seq] * len(batches)
        if len(positions) != len(batches):
            raise LedgerError(f"{len(batches)} batches but {len(positions)} positions")
        if any(b < a for a, b in itertools.pairwise(positions)):
            raise LedgerError("positions must ascend: land batches in ingest-log order")
        attempt = 0
        with self.lock:
            while True:
                try:
                    result = self._land(batches, positions)
                except Exception as exc:
                    if _sqlstate(exc) in _RETRIED and attempt < self.retries:
                        attempt += 1
                        time.sleep(0.01 * 2**attempt)
                        continue
                    if self._reconnect_if_lost() and attempt < self.retries:
                        attempt += 1  # on a new session: nothing of the landing committed
                        continue
                    raise
                self._after_landing(result)
                return result

    def land_safely(
        self,
        batches: Sequence[Batch],
        *,
        positions: Sequence[int] | None = None,
        log_seq: int | None = None,
        received: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> PgLandResult:
        """`land`, and when a row's values make it fail, quarantine that row and land the
        rest (as the DuckDB lander's `land_safely`)."""
        try:
            return self.land(batches, positions=positions, log_seq=log_seq)
        except Exception as exc:
            state = _sqlstate(exc)
            if state is None or not state.startswith(_DATA_CLASSES):
                raise
        return land_without_refused(
            batches,
            self._trial,
            lambda: self.land(batches, positions=positions, log_seq=log_seq),
            lock=self.lock,
            received=received(),
        )

    # --- one landing ----------------------------------------------------------------------
    def _land(self, batches: Sequence[Batch], positions: Sequence[int]) -> PgLandResult:
        con = self.con
        result = PgLandResult()
        # Events of the control plane this landing newly inserted that make alerts (a
        # re-delivered event, or one another collector landed first, alerts nobody twice).
        alerts: list[Alert] | None = [] if self.on_alerts is not None else None
        cur = con.cursor()
        try:
            started = time.perf_counter()
            # One landing of this collector at a time, fleet-wide (a second process started
            # with the same id waits here, then skips what the first landed).
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                ["comptroller.ledger:" + self.collector_id],
            )
            cur.fetchall()
            cur.execute(
                "SELECT coalesce(max(position), 0) FROM ledger_positions WHERE collector_id = $1",
                [self.collector_id],
            )
            (mark,) = cur.fetchone() or (0,)
            todo = [(b, p) for b, p in zip(batches, positions, strict=True) if p > mark]
            result.skipped_positions = sorted({p for p in positions if p <= mark})
            if not todo:
                self._rollback()
                return result
            kept = [b for b, _ in todo]
            new, keep, remove, dropped = decide(self._relations, kept)
            tables = _merge(kept)
            if "derive" in tables and not all(keep):
                tables["derive"] = tables["derive"].filter(pa.array(keep, pa.bool_()))
            resources: pa.Table | None = None
            if "spans" in tables and tables["spans"].num_rows:
                tables["spans"], resources = self._split_resources(tables["spans"])
            staged = time.perf_counter()
            self.timings["stage"] += staged - started
            usage_rows = 0
            if resources is not None:
                tables["spans"] = self._land_resources(cur, tables["spans"], resources)
            for name in sorted(tables, key=_rank):
                table = tables[name]
                if table.num_rows == 0:
                    continue
                count = self._insert(cur, name, table, alerts=alerts)
                if name == "derive":
                    result.derived = count
                else:
                    result.inserted[name] = count
                if name in ("llm_usage", "derive"):
                    usage_rows += count
            if remove:
                result.superseded = self._remove(cur, remove)
            inserted = time.perf_counter()
            self.timings["insert"] += inserted - staged
            if self.rollup and usage_rows:
                for statement in rollup_upserts("_landed_usage", self.timezone):
                    cur.execute(statement)
            rolled = time.perf_counter()
            self.timings["rollup"] += rolled - inserted
            landed = [p for _, p in todo]
            cur.execute(
                "INSERT INTO ledger_positions (collector_id, position, first_position, rows) "
                "VALUES ($1, $2, $3, $4)",
                [
                    self.collector_id,
                    max(landed),
                    min(landed),
                    sum(result.inserted.values()) + result.derived,
                ],
            )
            con.commit()
            self.timings["commit"] += time.perf_counter() - rolled
            result.landed_positions = sorted(set(landed))
        except BaseException:
            self._rollback()
            raise
        finally:
            cur.close()
        self._relations_commit(new, dropped)
        if alerts:
            self._send_alerts(alerts)
        return result

    def _send_alerts(self, alerts: list[Alert]) -> None:
        """Hand alerts of a committed transaction to `on_alerts`."""
        if self.on_alerts is None or not alerts:
            return
        try:
            self.on_alerts(alerts)
        except Exception:  # alerting never undoes or fails a landing
            _log.exception("comptroller: alerts of a landing were not queued")

    def _rollback(self) -> None:
        # Staging tables created in the transaction are gone with it.
        self.con.rollback()
        self._staged.clear()

    def _stage(self, cur: Cursor, name: str, table: pa.Table) -> str:
        """Copy `table` into this session's staging table for `name` (emptied at commit)."""
        columns = tuple((f.name, arrow_pg_type(f.type)) for f in table.schema)
        stage = f"_stage_{name}"
        if (name, columns) not in self._staged:
            cur.execute(f"DROP TABLE IF EXISTS {stage}")
            body = ", ".join(f"{c} {t}" for c, t in columns)
            cur.execute(f"CREATE TEMP TABLE {stage} ({body}) ON COMMIT DELETE ROWS")
            self._staged = {s for s in self._staged if s[0] != name} | {(name, columns)}
        cur.adbc_ingest(stage, table, mode="append", temporary=True)
        return stage

    def _insert(
        self, cur: Cursor, name: str, table: pa.Table, *, alerts: list[Alert] | None = None
    ) -> int:
        """Insert the staged rows of `name` the ledger does not hold; how many it added.

        With `alerts`, the alerts of the budget and circuit events it added go there.
        """
        target = "llm_usage" if name == "derive" else name
        declared = LANDED[target]
        stage = self._stage(cur, name, table)
        names = [c.name for c in declared.landed]
        select = [pg_select_expr(c, table.schema.field(c.name).type) for c in declared.landed]
        if target == "spans":
            names.append("resource_id")
            select.append("resource_id")
        key = conflict_key(target)
        order = ", ".join(key)
        insert = (
            f"INSERT INTO {STORED.get(target, target)} ({', '.join(names)}) "
            f"SELECT {', '.join(select)} FROM {stage} ORDER BY {order} "
            f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
        )
        if target == "llm_usage":
            self._ensure_landed_usage(cur)
            columns = ", ".join(DELTA_INPUTS)
            cur.execute(
                f"WITH ins AS ({insert} RETURNING {columns}) "
                f"INSERT INTO _landed_usage ({columns}) SELECT {columns} FROM ins"
            )
        elif alerts is not None and target in _ALERT_COLUMNS:
            cur.execute(f"{insert} RETURNING {_ALERT_COLUMNS[target]}")
            names = [d[0] for d in cur.description or ()]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            alerts.extend(alerts_of(target, rows))
            return len(rows)
        else:
            cur.execute(insert)
        return max(int(cur.rowcount), 0)

    def _ensure_landed_usage(self, cur: Cursor) -> None:
        if ("_landed_usage", ()) in self._staged:
            return
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _landed_usage ON COMMIT DELETE ROWS AS "
            f"SELECT {', '.join(DELTA_INPUTS)} FROM llm_usage WITH NO DATA"
        )
        self._staged.add(("_landed_usage", ()))

    def _split_resources(self, spans: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The spans with their resources' ids (signed), and the distinct resources."""
        ids, distinct, texts = split_resources(spans.column("resource"), self.resource_id)
        signed = pc.cast(ids, pa.int64(), safe=False)
        first = (
            pa.table({"resource_id": signed, "ts": spans.column("start_ts")})
            .group_by("resource_id", use_threads=False)
            .aggregate([("ts", "min")])
        )
        distinct_ids = pc.cast(pa.array(distinct, pa.uint64()), pa.int64(), safe=False)
        order = pc.index_in(distinct_ids, first.column("resource_id"))
        resources = pa.table(
            {
                "resource_id": distinct_ids,
                "resource": pa.array(texts, pa.string()),
                "first_seen": first.column("ts_min").take(order),
            }
        )
        return spans.append_column("resource_id", signed), resources

    def _land_resources(self, cur: Cursor, spans: pa.Table, resources: pa.Table) -> pa.Table:
        """Store the new resources; the spans to land, resources by id where unambiguous
        (two different resources under one id stay inline in their spans, as in DuckDB)."""
        stage = self._stage(cur, "resources", resources)
        cur.execute(
            "INSERT INTO resources (resource_id, resource, first_seen) "
            f"SELECT resource_id, resource::JSONB, first_seen FROM {stage} "
            "ORDER BY resource_id ON CONFLICT (resource_id) DO NOTHING"
        )
        cur.execute(
            f"SELECT DISTINCT n.resource_id FROM {stage} AS n JOIN resources AS r "
            "ON r.resource_id = n.resource_id WHERE r.resource <> n.resource::JSONB"
        )
        clashes = {int(row[0]) for row in cur.fetchall()}
        ids = resources.column("resource_id").to_pylist()
        clashes.update(i for i in set(ids) if ids.count(i) > 1)
        by_id = spans.column("resource_id")
        inline = spans.column("resource")
        if clashes:
            clash = pc.is_in(by_id, pa.array(sorted(clashes), pa.int64()))
            by_id = pc.if_else(clash, pa.scalar(None, pa.int64()), by_id)
            inline = pc.if_else(clash, inline, pa.scalar(None, pa.string()))
        else:
            inline = pa.nulls(spans.num_rows, pa.string())
        index = spans.schema.get_field_index
        spans = spans.set_column(index("resource"), "resource", inline)
        return spans.set_column(index("resource_id"), "resource_id", by_id)

    def _remove(self, cur: Cursor, remove: set[str]) -> int:
        """Delete superseded derived rows; take their sums off the rollups."""
        ids = pa.table({"usage_id": pa.array(sorted(remove), pa.string())})
        stage = self._stage(cur, "remove", ids)
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _removed_usage ON COMMIT DELETE ROWS AS "
            f"SELECT {', '.join(DELTA_INPUTS)} FROM llm_usage WITH NO DATA"
        )
        columns = ", ".join(DELTA_INPUTS)
        cur.execute(
            f"WITH gone AS (DELETE FROM llm_usage WHERE source LIKE 'derived:%' "
            f"AND usage_id IN (SELECT usage_id FROM {stage}) RETURNING {columns}) "
            f"INSERT INTO _removed_usage ({columns}) SELECT {columns} FROM gone"
        )
        removed = max(int(cur.rowcount), 0)
        if removed and self.rollup:
            for statement in rollup_upserts("_removed_usage", self.timezone, sign=-1):
                cur.execute(statement)
        return removed

    def _trial(self, name: str, table: pa.Table) -> str | None:
        """Insert `table` in a transaction rolled back; the data error it raised, if any."""
        if table.num_rows == 0:
            return None
        if name == "spans":
            table = table.append_column("resource_id", pa.nulls(table.num_rows, pa.int64()))
        cur = self.con.cursor()
        try:
            self._insert(cur, name, table)
            if name in ("llm_usage", "derive") and self.rollup:
                for statement in rollup_upserts("_landed_usage", self.timezone):
                    cur.execute(statement)
        except Exception as exc:
            state = _sqlstate(exc)
            if state is None or not state.startswith(_DATA_CLASSES):
                raise
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        finally:
            self._rollback()
            cur.close()
        return None

    # --- set-up ---------------------------------------------------------------------------
    def _claim_zone(self) -> None:
        """Record the rollups' time zone, or refuse a ledger cut in another one."""
        cur = self.con.cursor()
        try:
            cur.execute(
                "INSERT INTO comptroller_meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO NOTHING",
                [ROLLUP_TIMEZONE_KEY, self.timezone],
            )
            cur.execute("SELECT value FROM comptroller_meta WHERE key = $1", [ROLLUP_TIMEZONE_KEY])
            (found,) = cur.fetchone() or (self.timezone,)
            self.con.commit()
        finally:
            cur.close()
        if found != self.timezone:
            raise ConfigError(
                f"the ledger's rollups are cut in {found}, not {self.timezone}: set the same "
                "timezone on every collector (or rebuild the rollups with rebuild_rollups_pg)"
            )

    def _prime(self) -> None:
        """Rebuild the relations of recent traces from the ledger (as `Lander._prime`)."""
        from comptroller.collector._aliases import LEAF_OPERATIONS
        from comptroller.collector._normalise import COMPTROLLER_FLAG, LEAF_FLAG

        since = dt.datetime.now(dt.UTC) - self.lookback
        leaf = ", ".join(f"'{op}'" for op in sorted(LEAF_OPERATIONS))
        cur = self.con.cursor()
        try:
            cur.execute(
                "SELECT trace_id, span_id, parent_span_id, flags FROM ("
                "SELECT trace_id, span_id, parent_span_id, start_ts, "
                f"(CASE WHEN operation IN ({leaf}) THEN {LEAF_FLAG} ELSE 0 END) "
                f"+ (CASE WHEN dialect = 'comptroller' THEN {COMPTROLLER_FLAG} ELSE 0 END) "
                "AS flags FROM span_rows WHERE is_genai AND start_ts >= $1 "
                "ORDER BY start_ts DESC LIMIT $2) AS s ORDER BY start_ts",
                [since, self.max_traces],
            )
            spans = cur.fetchall()
            cur.execute(
                "SELECT trace_id, span_id, source, parent_span_id FROM ("
                "SELECT u.trace_id, u.span_id, u.source, s.parent_span_id, u.ts "
                "FROM llm_usage u LEFT JOIN span_rows s "
                "ON s.trace_id = u.trace_id AND s.span_id = u.span_id "
                "WHERE u.ts >= $1 AND length(u.trace_id) = 32 AND length(u.span_id) = 16 "
                "ORDER BY u.ts DESC LIMIT $2) AS r ORDER BY ts",
                [since, self.max_traces],
            )
            usage = cur.fetchall()
            self.con.commit()
        finally:
            cur.close()
        new = _Relations()
        for t, s, p, flags in spans:
            if flags:
                new.spans[bytes.fromhex(t + s)] = int(flags)
                if int(flags) & LEAF_FLAG and p:
                    new.leaf_parents[bytes.fromhex(t + p)] = None
        for t, s, source, p in usage:
            key = bytes.fromhex(t + s)
            if source == "comptroller":
                new.usage[key] = None
            else:
                parent = bytes.fromhex(t + p) if p else None
                new.derived[key] = parent
                if parent is not None:
                    new.children.setdefault(parent, []).append(key)
        self._relations_commit(new, set())

    def _relations_commit(self, new: _Relations, dropped: set[bytes]) -> None:
        for key in dropped:
            self._relations.derived.pop(key, None)
        self._relations.merge(new, self.max_traces)


_ALERT_COLUMNS: Final = {
    "budget_events": "event_id, extract(epoch FROM ts)::FLOAT8 AS ts, day::TEXT AS day, kind, "
    "tenant, context, purpose, cap_usd::TEXT AS cap_usd, spent_usd::TEXT AS spent_usd, "
    "attributes::TEXT AS attributes",
    "circuit_events": "event_id, extract(epoch FROM ts)::FLOAT8 AS ts, provider, model, state, "
    "reason, failures, cooldown_s",
}
"""What an alert reads of each event table (`collector._notify.ALERT_COLUMNS` in PostgreSQL)."""
_WARN_RATIO: Final = 0.8
"""The utilisation the budget state calls `warning` (as `record_budget_events`' default)."""


def _insert_budget_events(
    cur: Cursor,
    states: Sequence[BudgetState],
    *,
    stamp: dt.datetime,
    timezone: str,
    policy: WarningPolicy | None,
) -> list[BudgetEvent]:
    """Insert the crossings of `states` not recorded yet (by anyone); those it inserted.

    The rules of `analytics.record_budget_events` (DuckDB), over a PostgreSQL cursor: each
    key's warnings under its policy (`WarningPolicy.for_key`), each once per key, threshold
    and day under the id the control plane gives it (`warning_event_id`), and the cap's
    crossing once per key and day unless one is recorded already (by the control plane,
    under an id of its own).
    """
    policy = policy if policy is not None else WarningPolicy()
    day = states[0].day
    cur.execute(
        "SELECT coalesce(tenant, ''), coalesce(context, ''), coalesce(purpose, ''), "
        "coalesce(attribute, '') FROM budget_events WHERE day = $1::DATE AND kind = 'exceeded'",
        [day.isoformat()],
    )
    exceeded_seen = {(str(a), str(b), str(c), str(d)) for a, b, c, d in cur.fetchall()}
    recorded: list[BudgetEvent] = []
    for event, attributes in budget_crossings(
        states,
        exceeded_seen=exceeded_seen,
        stamp=stamp,
        timezone=timezone,
        policy=policy,
        warn_ratio=_WARN_RATIO,
    ):
        values = pa.record_batch(
            [
                pa.array([event.event_id], pa.string()),
                pa.array([stamp.astimezone(dt.UTC)], pa.timestamp("us", tz="UTC")),
                pa.array([day.isoformat()], pa.string()),
                pa.array([event.kind], pa.string()),
                pa.array([event.tenant], pa.string()),
                pa.array([event.context], pa.string()),
                pa.array([event.purpose], pa.string()),
                pa.array([str(event.cap_usd)], pa.string()),
                pa.array([str(event.spent_usd)], pa.string()),
                pa.array([json.dumps(attributes)], pa.string()),
                pa.array([event.attribute or None], pa.string()),
            ],
            names=[f"p{i}" for i in range(11)],
        )
        cur.execute(
            "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
            "cap_usd, spent_usd, service_name, attributes, attribute) VALUES "
            "($1, $2, $3::DATE, $4, $5, $6, $7, $8::NUMERIC, $9::NUMERIC, "
            "'comptroller.analytics', $10::JSONB, $11) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            values,
        )
        if cur.fetchall():  # else raised before, here, by another collector or the plane
            recorded.append(event)
    return recorded


def _rank(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _merge(batches: Sequence[Batch]) -> dict[str, pa.Table]:
    merged: dict[str, list[pa.Table]] = {}
    for batch in batches:
        for name, table in batch.tables.items():
            merged.setdefault(name, []).append(table)
    return {
        name: parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        for name, parts in merged.items()
    }
