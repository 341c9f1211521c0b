"""Landing: Arrow batches into DuckDB, all of a batch or none of it, idempotent on ids.

Each table goes in with one `INSERT … SELECT FROM <arrow>` (never `executemany`). Re-sent
spans (same trace and span id) and usage rows (same usage id) are skipped by an anti-join on
the rows landed in the batch's time range (`analytics.insert_new_sql`: these tables have no
primary key, whose in-memory index would grow without bound); events (same id) are ignored by
their primary keys. Duplicates within one batch are landed once.

Derived usage rows — for third-party inference spans — are settled in the same transaction,
so the rule holds whatever order spans and usage rows arrive in:

* a span is counted only if no comptroller usage row covers it (same span, or its parent),
  its parent is not a comptroller span, and no child inference span (a lower
  instrumentation layer reporting the same call) exists;
* when such a covering row or child arrives later, the derived row it makes redundant is
  deleted.

The relations this needs (which GenAI spans, usage rows and derived rows a trace has) are
kept in memory per recent trace — a join against the whole `spans` table per batch would
grow with the table — and rebuilt from the database when the lander starts, so a restart
decides as a running collector would. The collector is the file's only writer, so the cache
cannot miss a row written by someone else.

The daily rollup is brought up to date in the same transaction: the rows an insert actually
added (`… RETURNING` gives exactly those, never a duplicate it skipped)
go to analytics' `add_usage_rows` as a delta, in proportion to the batch; only the groups of
deleted (superseded) derived rows are recomputed with `apply_usage_batch`.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from comptroller import analytics
from comptroller.analytics._delta import DELTA_INPUTS
from comptroller.analytics._tables import LANDED, select_expr
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector._aliases import LEAF_OPERATIONS
from comptroller.collector._normalise import (
    COMPTROLLER_FLAG,
    LEAF_FLAG,
    Batch,
)
from comptroller.collector._notify import (
    ALERT_COLUMNS,
    Alert,
    alerts_of,
    anomaly_alert,
    budget_event_alert,
)
from comptroller.collector._resources import resource_id, split_resources
from comptroller.collector._validate import quarantine_rows

if TYPE_CHECKING:
    from comptroller.config import AttributionBudget

_log = logging.getLogger("comptroller.collector")
_ALERTING: Final = frozenset({"budget_events", "circuit_events"})
"""Event tables whose newly landed rows may be alerts (`collector/_notify.py`)."""
_DATA_ERRORS: Final = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException)
"""What a row's values can make the database raise (a cast out of range, a constraint): the
landing isolates and quarantines such rows. Other errors (I/O, memory) are retried."""
_ROLLUP_KEYS: Final = "ts, tenant, org, context, purpose, provider, request_model, response_model"
_DELTA_COLS: Final = ", ".join(DELTA_INPUTS)
"""What `add_usage_rows` reads of an inserted row (not ids or labels: less to hand back)."""
_KEY_SCHEMA: Final = pa.schema(
    [("ts", pa.timestamp("us", tz="UTC"))]
    + [(name, pa.string()) for name in _ROLLUP_KEYS.split(", ")[1:]]
)
DATABASE_ID_KEY: Final = "database_id"
"""`comptroller_meta` key of the database's id (which ingest log belongs to it)."""
LOG_SEQ_KEY: Final = "ingest_log_seq"
"""`comptroller_meta` key of the last ingest-log entry landed."""
_LEAF: Final = LEAF_FLAG
_COMPTROLLER: Final = COMPTROLLER_FLAG
_counter = itertools.count()


def _insert_sql(table: str, source: str, data: pa.Table) -> str:
    target = "llm_usage" if table == "derive" else table
    declared = LANDED[target]
    schema_names = declared.names
    select = [select_expr(column) for column in declared.landed]
    if target == "spans":  # stored in span_rows, with the id of the resource
        schema_names.append("resource_id")
        select.append("resource_id")
    if target in analytics.DEDUP_KEYS:  # empty tables are not landed
        return analytics.insert_new_sql(target, source, data, columns=schema_names, select=select)
    # Events are few: their primary keys ignore what was landed before.
    return (
        f"INSERT OR IGNORE INTO {target} ({', '.join(schema_names)}) "
        f"SELECT {', '.join(select)} FROM {source}"
    )


@dataclass(kw_only=True)
class LandResult:
    """Rows a landing inserted per table (duplicates ignored are not counted)."""

    inserted: dict[str, int] = field(default_factory=dict)
    derived: int = 0
    superseded: int = 0
    quarantined: pa.Table | None = None
    """Rows the database refused, moved to `rejected_records` by `land_safely`."""


class LedgerLander(Protocol):
    """What the collector's pipeline needs of a lander, whichever store it lands into:
    `Lander` (a DuckDB file) or `collector._land_pg.PgLander` (a PostgreSQL ledger)."""

    lock: threading.Lock
    """Held while landing (reads that need the landing's state take it)."""

    def land_safely(
        self,
        batches: Sequence[Batch],
        *,
        log_seq: int | None = None,
        positions: Sequence[int] | None = None,
    ) -> LandResult:
        """Land `batches` in one transaction, quarantining rows the store refuses.

        Args:
            batches: What to land, in ingest-log order.
            log_seq: The ingest-log sequence number of the last batch.
            positions: The ingest-log sequence number of each batch.
        """
        ...

    def flush_budget_events(self) -> None:
        """Record the budget crossings that skipped checks left pending."""
        ...

    def database_id(self) -> str:
        """The store's id (the ingest log is bound to it)."""
        ...

    def landed_log_seq(self) -> int:
        """The ingest-log sequence number of the last request landed (0: none)."""
        ...


class _Relations:
    """What recent traces hold that matters for counting usage, keyed by span.

    A span's key is its trace id and span id, raw (24 bytes: a third of a tuple of two hex
    strings); a parent's key is the trace id and the parent span id. Flat dicts
    (insertion-ordered, so the oldest entries go first when over the bound) make a batch's
    lookups and its merge after commit a handful of C-level dict operations.
    """

    __slots__ = ("children", "derived", "leaf_parents", "spans", "usage")

    def __init__(self) -> None:
        self.spans: dict[bytes, int] = {}
        """Flags of leaf and comptroller GenAI spans."""
        self.leaf_parents: dict[bytes, None] = {}
        """Spans that have a leaf inference child (a lower layer reported the call)."""
        self.usage: dict[bytes, None] = {}
        """Spans that have a comptroller usage row."""
        self.derived: dict[bytes, bytes | None] = {}
        """Spans whose derived usage row is landed -> their parent's key."""
        self.children: dict[bytes, list[bytes]] = {}
        """Parent key -> spans with a derived row under that parent."""

    def merge(self, other: _Relations, limit: int) -> None:
        self.spans.update(other.spans)
        self.leaf_parents.update(other.leaf_parents)
        self.usage.update(other.usage)
        self.derived.update(other.derived)
        for key, kids in other.children.items():
            self.children.setdefault(key, []).extend(kids)
        for table in (self.spans, self.leaf_parents, self.usage, self.derived, self.children):
            excess = len(table) - limit
            if excess > 0:
                # The oldest keys in one pass: `del table[next(iter(table))]` in a loop
                # rescans the deleted slots at the front on every step (quadratic; 83 ms
                # for 5,000 evictions from 200,000 keys, with the GIL held).
                for key in list(itertools.islice(table, excess)):
                    del table[key]


def refused_rows(
    trial: Callable[[str, pa.Table], str | None], name: str, table: pa.Table
) -> list[tuple[int, tuple[str, str]]]:
    """The rows of `table` (bound for `name`) a ledger refuses, with why, found by bisection:
    `trial` lands a slice in a transaction rolled back and returns the error it raised. A few
    bad rows among many cost O(bad × log rows) trials, and the good rows land."""
    error = trial(name, table)
    if error is None:
        return []
    if table.num_rows == 1:
        return [(0, ("refused_by_database", error))]
    mid = table.num_rows // 2
    left = refused_rows(trial, name, table.slice(0, mid))
    right = refused_rows(trial, name, table.slice(mid))
    return left + [(i + mid, found) for i, found in right]


_R = TypeVar("_R", bound="LandResult")


def land_without_refused(
    batches: Sequence[Batch],
    trial: Callable[[str, pa.Table], str | None],
    land: Callable[[], _R],
    *,
    lock: threading.Lock,
    received: dt.datetime,
) -> _R:
    """After a landing failed on a row's values: move every row the ledger refuses (found by
    `trial`, see `refused_rows`) into its batch's `rejected_records`, then `land` the rest
    with the quarantine; the result's `quarantined` holds the rows moved. One way for every
    ledger (DuckDB, PostgreSQL)."""
    before = [b.tables.get("rejected_records") for b in batches]
    moved = 0
    with lock:
        for batch in batches:
            bad = {name: dict(refused_rows(trial, name, t)) for name, t in batch.tables.items()}
            dropped = bad.pop("rejected_records", {})
            if dropped:  # the quarantine cannot be quarantined: those rows are lost
                quarantine = batch.tables["rejected_records"]
                keep = [i not in dropped for i in range(quarantine.num_rows)]
                batch.tables["rejected_records"] = quarantine.filter(pa.array(keep, pa.bool_()))
            moved += quarantine_rows(batch, bad, received=received)
    result = land()
    if moved:
        new = [
            b.tables["rejected_records"].slice(0 if old is None else old.num_rows)
            for b, old in zip(batches, before, strict=True)
            if "rejected_records" in b.tables
        ]
        result.quarantined = pa.concat_tables(new)
    return result


class Lander:
    """Lands batches into one DuckDB connection (the collector owns the file).

    Args:
        con: The writer's connection (schema migrated).
        timezone: Time zone of the daily rollup's days.
        lookback: How far back the trace relations are rebuilt from the database on start.
        max_traces: Bound on the spans (and usage rows) whose relations are kept in memory.
        rollup: Keep `llm_usage_daily` up to date in each landing.
        budget_events_every_s: Look for budget crossings (warning, cap) at most this often;
            0 checks in every landing. A busy collector lands many times a second and the
            check reads every budget's state: checks skipped are made up by the next
            landing after the interval, or by `flush_budget_events` when the writer idles.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        timezone: str = "UTC",
        lookback: dt.timedelta = dt.timedelta(hours=1),
        max_traces: int = 200_000,
        rollup: bool = True,
        budget_events_every_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        warnings: WarningPolicy | None = None,
        on_alerts: Callable[[list[Alert]], None] | None = None,
        attribution_budgets: Sequence[AttributionBudget] = (),
    ) -> None:
        self.con = con
        self.attribution_budgets = tuple(attribution_budgets)
        """The budgets by attribution whose crossings are recorded with the others."""
        self.warnings = warnings
        """When budgets warn (None: `record_budget_events`' default policy)."""
        self.on_alerts = on_alerts
        """Told, after each commit, of the alert-worthy events it newly landed."""
        self._alerts: list[Alert] = []
        self.budget_events_every_s = budget_events_every_s
        self._clock = clock
        self._budget_checked_at = -math.inf
        self.budget_events_pending = False
        """A landing added usage since the last check for budget crossings."""
        self.timezone = timezone
        self.lookback = lookback
        self.max_traces = max_traces
        self.rollup = rollup
        self.lock = threading.Lock()
        self.resource_id: Callable[[str], int] = resource_id
        """How a resource's JSON text becomes its id (replaceable, for tests of clashes)."""
        self.timings: dict[str, float] = {
            "settle": 0.0,
            "insert": 0.0,
            "rollup": 0.0,
            "commit": 0.0,
        }
        """Seconds spent per landing phase since creation (the benchmark's split)."""
        self._relations = _Relations()
        self._prime()

    def land(self, batches: Sequence[Batch], *, log_seq: int | None = None) -> LandResult:
        """Land every table of `batches` in one transaction (all or nothing).

        Args:
            batches: What to land.
            log_seq: The ingest-log sequence number of the last request in `batches`,
                committed with the rows (`comptroller_meta.ingest_log_seq`): replay on
                start resumes after it.
        """
        merged: dict[str, list[pa.Table]] = {}
        for batch in batches:
            for name, table in batch.tables.items():
                merged.setdefault(name, []).append(table)
        tables = {
            name: parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            for name, parts in merged.items()
        }
        result = LandResult()
        if not tables and log_seq is None:
            return result
        resources: pa.Table | None = None
        if "spans" in tables and tables["spans"].num_rows:
            tables["spans"], resources = self._split_resources(tables["spans"])
        con = self.con
        suffix = next(_counter)
        registered: list[str] = []
        with self.lock:
            started = time.perf_counter()
            new, keep, remove, dropped = self._decide(batches)
            if "derive" in tables and not all(keep):  # usually every one is kept
                tables["derive"] = tables["derive"].filter(pa.array(keep, pa.bool_()))
            settled = time.perf_counter()
            self.timings["settle"] += settled - started
            try:
                con.execute("BEGIN TRANSACTION").fetchall()
                try:
                    # Rows newly inserted (RETURNING gives exactly those, never the
                    # duplicates skipped) are added to the rollup as a delta; only the groups
                    # of deleted derived rows are recomputed from llm_usage.
                    added: list[pa.Table] = []
                    removed: pa.Table | None = None
                    if resources is not None:
                        view = f"_batch_resources_{suffix}"
                        con.register(view, resources)
                        registered.append(view)
                        tables["spans"] = self._land_resources(view, tables["spans"], resources)
                    for name, table in tables.items():
                        if table.num_rows == 0:
                            continue
                        view = f"_batch_{name}_{suffix}"
                        con.register(view, table)
                        registered.append(view)
                        if name in ("derive", "llm_usage"):
                            rows = con.sql(
                                f"{_insert_sql(name, view, table)} RETURNING {_DELTA_COLS}"
                            ).to_arrow_table()
                            added.append(rows)
                            if name == "derive":
                                result.derived = rows.num_rows
                            else:
                                result.inserted[name] = rows.num_rows
                        elif self.on_alerts is not None and name in _ALERTING:
                            # RETURNING gives the rows newly landed: a re-delivered event
                            # alerts nobody twice.
                            cursor = con.execute(
                                f"{_insert_sql(name, view, table)} RETURNING {ALERT_COLUMNS[name]}"
                            )
                            names = [d[0] for d in cursor.description or ()]
                            rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
                            result.inserted[name] = len(rows)
                            self._alerts.extend(alerts_of(name, rows))
                        else:
                            result.inserted[name] = _count(
                                con.execute(_insert_sql(name, view, table))
                            )
                    if remove:
                        ids = pa.table({"usage_id": pa.array(sorted(remove), pa.string())})
                        view = f"_batch_remove_{suffix}"
                        con.register(view, ids)
                        registered.append(view)
                        removed = con.sql(
                            "DELETE FROM llm_usage WHERE source LIKE 'derived:%' "
                            f"AND usage_id IN (SELECT usage_id FROM {view}) "
                            f"RETURNING {_ROLLUP_KEYS}"
                        ).to_arrow_table()
                        result.superseded = removed.num_rows
                    if log_seq is not None:
                        analytics.set_meta(con, LOG_SEQ_KEY, str(log_seq))
                    inserted = time.perf_counter()
                    self.timings["insert"] += inserted - settled
                    added = [t for t in added if t.num_rows]
                    if self.rollup and (added or (removed is not None and removed.num_rows)):
                        self._roll_up(added, removed)
                    rolled = time.perf_counter()
                    self.timings["rollup"] += rolled - inserted
                    con.execute("COMMIT").fetchall()
                    self.timings["commit"] += time.perf_counter() - rolled
                except BaseException:
                    con.execute("ROLLBACK").fetchall()
                    self._alerts.clear()
                    raise
            finally:
                for view in registered:
                    con.unregister(view)
            self._commit(new, dropped)
            self._send_alerts()
        return result

    def _send_alerts(self) -> None:
        """Hand what the committed transaction newly landed to `on_alerts`."""
        alerts, self._alerts = self._alerts, []
        if alerts and self.on_alerts is not None:
            try:
                self.on_alerts(alerts)
            except Exception:  # alerting never undoes or fails a landing
                _log.exception("comptroller: alerts of a landing were not queued")

    def land_safely(
        self,
        batches: Sequence[Batch],
        *,
        log_seq: int | None = None,
        positions: Sequence[int] | None = None,
        received: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> LandResult:
        """`land`, and when a row's values make it fail, quarantine that row and land the rest.

        `positions` (each batch's ingest-log sequence number) is what the PostgreSQL lander
        keys its exactly-once landing on; this lander, the file's only writer, commits
        `log_seq` alone and ignores it.

        `validate` keeps out-of-range values from reaching the landing; this is the defence
        in depth. Without it one bad row failed its whole landing, which the writer retried
        forever, and a restart replayed it from the ingest log and failed again.

        Raises:
            Exception: The landing failed for another reason (retried by the caller), or
                still fails once the refused rows are out.
        """
        try:
            return self.land(batches, log_seq=log_seq)
        except _DATA_ERRORS:
            pass
        return land_without_refused(
            batches,
            self._trial,
            lambda: self.land(batches, log_seq=log_seq),
            lock=self.lock,
            received=received(),
        )

    def _trial(self, name: str, table: pa.Table) -> str | None:
        """Insert `table` (and roll its usage up) in a transaction rolled back; the error."""
        if table.num_rows == 0:
            return None
        if name == "spans":  # resources inline, as for a clash (the trial stores none)
            table = table.append_column("resource_id", pa.nulls(table.num_rows, pa.uint64()))
        con = self.con
        view = f"_trial_{name}_{next(_counter)}"
        con.register(view, table)
        try:
            con.execute("BEGIN TRANSACTION").fetchall()
            try:
                if name in ("derive", "llm_usage"):
                    rows = con.sql(
                        f"{_insert_sql(name, view, table)} RETURNING {_DELTA_COLS}"
                    ).to_arrow_table()
                    if self.rollup and rows.num_rows:
                        analytics.add_usage_rows(con, rows, timezone=self.timezone)
                else:
                    con.execute(_insert_sql(name, view, table)).fetchall()
            except _DATA_ERRORS as exc:
                return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            finally:
                con.execute("ROLLBACK").fetchall()
        finally:
            con.unregister(view)
        return None

    def _split_resources(self, spans: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The spans with their resources' ids, and the distinct resources (schema v3)."""
        ids, distinct, texts = split_resources(spans.column("resource"), self.resource_id)
        first = (
            pa.table({"resource_id": ids, "ts": spans.column("start_ts")})
            .group_by("resource_id", use_threads=False)
            .aggregate([("ts", "min")])
        )
        order = pc.index_in(pa.array(distinct, pa.uint64()), first.column("resource_id"))
        resources = pa.table(
            {
                "resource_id": pa.array(distinct, pa.uint64()),
                "resource": pa.array(texts, pa.string()),
                "first_seen": first.column("ts_min").take(order),
            }
        )
        return spans.append_column("resource_id", ids), resources

    def _land_resources(self, view: str, spans: pa.Table, resources: pa.Table) -> pa.Table:
        """Store the new resources; the spans to land, resources by id where unambiguous.

        Two different resources with one id (a 64-bit hash: never seen in practice) are
        both kept inline in their spans' rows, so that nothing is ever read back wrong.
        """
        con = self.con
        counts = collections.Counter(resources.column("resource_id").to_pylist())
        clashes = {i for i, n in counts.items() if n > 1}
        clashes.update(
            row[0]
            for row in con.execute(
                f"SELECT n.resource_id FROM {view} AS n JOIN resources AS r "
                "ON r.resource_id = n.resource_id WHERE r.resource::VARCHAR <> n.resource"
            ).fetchall()
        )
        keep = "" if not clashes else f"WHERE resource_id NOT IN ({', '.join(map(str, clashes))})"
        con.execute(
            "INSERT OR IGNORE INTO resources (resource_id, resource, first_seen) "
            f"SELECT resource_id, CAST(resource AS JSON), first_seen FROM {view} {keep}"
        ).fetchall()
        by_id = spans.column("resource_id")
        inline = spans.column("resource")
        if clashes:
            clash = pc.is_in(by_id, pa.array(sorted(clashes), pa.uint64()))
            by_id = pc.if_else(clash, pa.scalar(None, pa.uint64()), by_id)
            inline = pc.if_else(clash, inline, pa.scalar(None, pa.string()))
        else:
            inline = pa.nulls(spans.num_rows, pa.string())
        index = spans.schema.get_field_index
        spans = spans.set_column(index("resource"), "resource", inline)
        return spans.set_column(index("resource_id"), "resource_id", by_id)

    def database_id(self) -> str:
        """A random id given to the database when a collector first opens it."""
        found = analytics.meta_value(self.con, DATABASE_ID_KEY)
        if found is not None:
            return found
        new = uuid.uuid4().hex
        analytics.set_meta(self.con, DATABASE_ID_KEY, new)
        return new

    def landed_log_seq(self) -> int:
        """The ingest-log sequence number of the last request landed (0: none)."""
        return int(analytics.meta_value(self.con, LOG_SEQ_KEY) or 0)

    # --- counting rules ---------------------------------------------------------------------
    def _decide(
        self, batches: Sequence[Batch]
    ) -> tuple[_Relations, list[bool], set[str], set[bytes]]:
        """`decide` over this lander's relations."""
        return decide(self._relations, batches)

    def _commit(self, new: _Relations, dropped: set[bytes]) -> None:
        for key in dropped:
            self._relations.derived.pop(key, None)
        self._relations.merge(new, self.max_traces)

    def _prime(self) -> None:
        """Rebuild the relations of recent traces from the database.

        The newest `max_traces` spans and usage rows of the lookback, inserted oldest first
        as a running lander would have: a late row is most likely to relate to those.
        """
        con = self.con
        since = dt.datetime.now(dt.UTC) - self.lookback
        limit = self.max_traces
        leaf = ", ".join(f"'{op}'" for op in sorted(LEAF_OPERATIONS))
        spans = con.sql(
            "SELECT trace_id, span_id, parent_span_id, flags FROM ("
            "SELECT trace_id, span_id, parent_span_id, start_ts, "
            f"(CASE WHEN operation IN ({leaf}) THEN {_LEAF} ELSE 0 END) "
            f"+ (CASE WHEN dialect = 'comptroller' THEN {_COMPTROLLER} ELSE 0 END) AS flags "
            "FROM span_rows WHERE is_genai AND start_ts >= $since "
            "ORDER BY start_ts DESC LIMIT $limit) ORDER BY start_ts",
            params={"since": since, "limit": limit},
        ).to_arrow_table()
        usage = con.sql(
            "SELECT trace_id, span_id, source, parent_span_id FROM ("
            "SELECT u.trace_id, u.span_id, u.source, s.parent_span_id, u.ts FROM llm_usage u "
            "LEFT JOIN span_rows s ON s.trace_id = u.trace_id AND s.span_id = u.span_id "
            # the rows that can name a span (16-byte trace id, 8-byte span id)
            "WHERE u.ts >= $since AND length(u.trace_id) = 32 AND length(u.span_id) = 16 "
            "ORDER BY u.ts DESC LIMIT $limit) ORDER BY ts",
            params={"since": since, "limit": limit},
        ).to_arrow_table()
        new = _Relations()
        for t, s, p, flags in zip(*(c.to_pylist() for c in spans.columns), strict=True):
            if flags:
                new.spans[bytes.fromhex(t + s)] = flags
                if flags & _LEAF and p:
                    new.leaf_parents[bytes.fromhex(t + p)] = None
        for t, s, source, p in zip(*(c.to_pylist() for c in usage.columns), strict=True):
            key = bytes.fromhex(t + s)
            if source == "comptroller":
                new.usage[key] = None
            else:
                parent = bytes.fromhex(t + p) if p else None
                new.derived[key] = parent
                if parent is not None:
                    new.children.setdefault(parent, []).append(key)
        self._commit(new, set())

    def _roll_up(self, added: list[pa.Table], removed: pa.Table | None) -> None:
        # The delta first: a recompute after it sees llm_usage as committed, whereas a
        # delta after a recompute would count the new rows twice.
        if added:
            rows = added[0] if len(added) == 1 else pa.concat_tables(added)
            analytics.add_usage_rows(self.con, rows, timezone=self.timezone)
        if removed is not None and removed.num_rows:
            analytics.apply_usage_batch(self.con, _keys(removed), timezone=self.timezone)
        self.budget_events_pending = True
        if self._clock() - self._budget_checked_at >= self.budget_events_every_s:
            self._record_budget_events()

    def _record_budget_events(self) -> None:
        events = analytics.record_budget_events(
            self.con,
            timezone=self.timezone,
            policy=self.warnings,
            attribution_budgets=self.attribution_budgets,
        )
        anomalies = analytics.record_anomaly_events(self.con, timezone=self.timezone)
        self._budget_checked_at = self._clock()
        self.budget_events_pending = False
        if self.on_alerts is not None:
            self._alerts.extend(
                alert for event in events if (alert := budget_event_alert(event)) is not None
            )
            self._alerts.extend(
                alert for anomaly in anomalies if (alert := anomaly_alert(anomaly)) is not None
            )

    def flush_budget_events(self) -> None:
        """Record the budget crossings that skipped checks left pending (own transaction)."""
        with self.lock:
            if not self.budget_events_pending:
                return
            con = self.con
            con.execute("BEGIN TRANSACTION").fetchall()
            try:
                self._record_budget_events()
                con.execute("COMMIT").fetchall()
            except BaseException:
                con.execute("ROLLBACK").fetchall()
                self._alerts.clear()
                raise
            self._send_alerts()


def decide(
    relations: _Relations, batches: Sequence[Batch]
) -> tuple[_Relations, list[bool], set[str], set[bytes]]:
    """Which derived rows of `batches` to keep, and which landed ones to remove.

    The counting rules of the module's docstring, decided over `relations` (what recent
    traces hold, left untouched) and what the batches tell; both landers (DuckDB and
    PostgreSQL) decide with this one function.

    Returns:
        What the batches add to the relations (merged once they commit), one keep flag per
        derived row of the batches, the usage ids of landed derived rows to delete, and the
        keys of those rows.
    """
    cache = relations
    new = _Relations()
    genai = [ref for b in batches for ref in b.genai_refs]
    usage = [key for b in batches for key in b.usage_refs]
    # What this batch tells, before any decision.
    for key, parent, flags in genai:
        new.spans[key] = flags
        if flags & _LEAF and parent:
            new.leaf_parents[parent] = None
    for key in usage:
        new.usage[key] = None

    def is_comptroller(key: bytes) -> bool:
        return bool((new.spans.get(key) or cache.spans.get(key) or 0) & _COMPTROLLER)

    # Landed derived rows that this batch makes redundant.
    dropped: set[bytes] = set()

    def drop_children(key: bytes) -> None:
        for kid in cache.children.get(key, ()):
            if kid in cache.derived:
                dropped.add(kid)

    for key, parent, flags in genai:
        if flags & _LEAF and parent and parent in cache.derived:
            dropped.add(parent)
        if flags & _COMPTROLLER:
            drop_children(key)
    for key in usage:
        if key in cache.derived:
            dropped.add(key)
        drop_children(key)
    # Derived rows of this batch that nothing else counts.
    keep: list[bool] = []
    for batch in batches:
        for key, parent in batch.derive_refs:
            counted = (
                key in new.usage
                or key in cache.usage
                or key in new.leaf_parents
                or key in cache.leaf_parents
                or (
                    parent is not None
                    and (parent in new.usage or parent in cache.usage or is_comptroller(parent))
                )
            )
            keep.append(not counted)
            if not counted:
                new.derived[key] = parent
                if parent is not None:
                    new.children.setdefault(parent, []).append(key)
    remove = {f"span:{key[:16].hex()}:{key[16:].hex()}" for key in dropped}
    return new, keep, remove, dropped


def _keys(table: pa.Table) -> pa.Table:
    return table.select(_KEY_SCHEMA.names).cast(_KEY_SCHEMA)


def _count(relation: Any) -> int:
    row = relation.fetchone()
    return int(row[0]) if row and row[0] is not None else 0
