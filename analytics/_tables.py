"""The landed tables, declared once: column, DuckDB type, Arrow type, range and meaning.

Everything about a landed column derives from its declaration here: the Arrow schema the
collector builds its batches in (`arrow_schema`), the expression that converts a batch's
column to the stored type (`select_expr`), the range and meaning a value must have before
it lands (`Column.check`, applied by `collector/_validate.py`), and the DDL of tables added
since schema v3 (`create_sql`; the v1–v3 migrations are append-only text, and a test holds
the migrated database equal to these declarations).

A check is a promise about meaning, not only about the type: a cost fits `DECIMAL(20, 10)`
*and* is not negative (a negative cost would lower a budget's spend); a token count fits
`BIGINT` *and* stays below `MAX_TOKENS` (so that a day's sums in the rollup cannot overflow);
a timestamp lies between `EARLIEST_TS` and the collector's "latest accepted" bound.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

import pyarrow as pa

Check = Literal["money", "tokens", "time", "object"]
"""`money`: a non-negative amount that fits DECIMAL(20, 10); `tokens`: a count from 0 to
`MAX_TOKENS`; `time`: a timestamp from `EARLIEST_TS` to the collector's latest bound;
`object`: JSON text of an object with unique keys (lands as JSON or a MAP)."""

MONEY_TYPE: Final = "DECIMAL(20, 10)"
MONEY_LIMIT: Final = Decimal(10) ** 10
"""Amounts must be below this: DECIMAL(20, 10) holds ten digits before the point."""
MAX_TOKENS: Final = 10**12
"""Largest token count a row may carry. A trillion tokens is no single call's usage; the
bound keeps a day's sums (BIGINT in the rollup) far from overflowing."""
EARLIEST_TS: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""No telemetry predates this: an earlier timestamp is a unit or clock error."""

_TS: Final = pa.timestamp("us", tz="UTC")  # DuckDB TIMESTAMPTZ resolution
_STR: Final = pa.string()
_I64: Final = pa.int64()
_I32: Final = pa.int32()
_F64: Final = pa.float64()
_BOOL: Final = pa.bool_()


@dataclass(frozen=True)
class Column:
    """One column of a landed table."""

    name: str
    sql: str
    """Its DuckDB type (with NOT NULL / DEFAULT where the table has them)."""
    arrow: pa.DataType
    """Its type in the collector's Arrow batches."""
    check: Check | None = None
    """The range and meaning its values must have to land (None: the type suffices)."""
    landed: bool = True
    """Part of the collector's batches (False: written later by another part, e.g. the
    repricing provenance of `llm_usage`; NULL when a row lands)."""

    @property
    def sql_type(self) -> str:
        """The bare DuckDB type (no constraint)."""
        return self.sql.split(" NOT NULL")[0].split(" DEFAULT")[0].split(" PRIMARY KEY")[0]


@dataclass(frozen=True)
class Table:
    """A landed table: its columns, in stored order."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()

    def column(self, name: str) -> Column:
        """The column called `name`."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def landed(self) -> list[Column]:
        """The columns the collector's batches carry, in order."""
        return [c for c in self.columns if c.landed]

    @property
    def names(self) -> list[str]:
        """Names of the columns the collector lands, in order."""
        return [c.name for c in self.landed]

    @property
    def checked(self) -> list[Column]:
        """The landed columns with a range check."""
        return [c for c in self.landed if c.check is not None]


# The Arrow type DuckDB reads a column of each type as, when it needs no cast.
_NATURAL: Final[dict[str, pa.DataType]] = {
    "VARCHAR": _STR,
    "BIGINT": _I64,
    "INTEGER": _I32,
    "DOUBLE": _F64,
    "BOOLEAN": _BOOL,
    "TIMESTAMPTZ": _TS,
    "VARCHAR[]": pa.list_(_STR),
}


def select_expr(column: Column) -> str:
    """The SQL that turns the batch's column into the stored type (a cast where needed)."""
    natural = _NATURAL.get(column.sql_type)
    if natural is not None and natural == column.arrow:
        return column.name
    if column.check == "object":
        # Checked before landing (`collector/_validate.py`); a value the check let through
        # that still does not convert lands as NULL rather than failing the whole batch.
        return f"TRY_CAST(TRY_CAST({column.name} AS JSON) AS {column.sql_type})"
    return f"CAST({column.name} AS {column.sql_type})"


def arrow_schema(table: Table, *, extra: tuple[tuple[str, pa.DataType], ...] = ()) -> pa.Schema:
    """The Arrow schema of the collector's batches for `table` (plus `extra` columns)."""
    return pa.schema([(c.name, c.arrow) for c in table.landed] + list(extra))


def create_sql(table: Table) -> str:
    """`CREATE TABLE` of `table` from its declaration."""
    lines = [f"    {c.name:<20}{c.sql}" for c in table.columns]
    if table.primary_key:
        lines.append(f"    PRIMARY KEY ({', '.join(table.primary_key)})")
    return f"CREATE TABLE IF NOT EXISTS {table.name} (\n" + ",\n".join(lines) + "\n);\n"


def _col(
    name: str, sql: str, arrow: pa.DataType, check: Check | None = None, *, landed: bool = True
) -> Column:
    return Column(name, sql, arrow, check, landed)


def _tokens(nullable: bool) -> tuple[Column, ...]:
    sql = "BIGINT" if nullable else "BIGINT NOT NULL DEFAULT 0"
    return tuple(
        _col(name, sql, _I64, "tokens")
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        )
    )


# Token columns are inclusive counts (input includes cached, output includes reasoning), as in
# the OpenTelemetry GenAI specification and genai-prices.
LLM_USAGE: Final = Table(
    "llm_usage",
    (
        _col("usage_id", "VARCHAR NOT NULL", _STR),  # the landing's idempotency key
        _col("ts", "TIMESTAMPTZ NOT NULL", _TS, "time"),  # request start
        _col("trace_id", "VARCHAR", _STR),
        _col("span_id", "VARCHAR", _STR),
        _col("service_name", "VARCHAR", _STR),
        _col("tenant", "VARCHAR", _STR),  # the domain (workspace)
        _col("org", "VARCHAR", _STR),
        _col("context", "VARCHAR", _STR),
        _col("purpose", "VARCHAR", _STR),
        _col("operation", "VARCHAR", _STR),
        _col("provider", "VARCHAR", _STR),
        _col("request_model", "VARCHAR", _STR),
        _col("response_model", "VARCHAR", _STR),
        *_tokens(nullable=False),
        _col("cost_usd", MONEY_TYPE, _STR, "money"),  # NULL when unpriced: never a silent 0
        _col("price_source", "VARCHAR NOT NULL", _STR),
        _col("estimated", "BOOLEAN NOT NULL DEFAULT FALSE", _BOOL),
        _col("outcome", "VARCHAR NOT NULL", _STR),
        _col("error_type", "VARCHAR", _STR),
        _col("attempt", "INTEGER", _I32),
        _col("fallback_depth", "INTEGER", _I32),
        _col("profile_id", "VARCHAR", _STR),
        _col("profile_version", "INTEGER", _I32),
        _col("latency_ms", "DOUBLE", _F64),
        _col("budget_cap_usd", MONEY_TYPE, _STR, "money"),  # daily cap in force for the key
        _col("source", "VARCHAR NOT NULL", _STR),  # comptroller | derived:<dialect>
        # What `comptroller reprice` replaced (schema v5, analytics/_reprice.py).
        _col("repriced_at", "TIMESTAMPTZ", _TS, landed=False),
        _col("repriced_from_usd", MONEY_TYPE, _STR, landed=False),
        _col("repriced_from_source", "VARCHAR", _STR, landed=False),
        _col("price_version", "VARCHAR", _STR, landed=False),
        # Schema v9: non-token fees (part of cost_usd) and attribution.
        _col("fee_cost_usd", MONEY_TYPE, _STR, "money"),  # the fees' share of cost_usd
        _col("fees", "JSON", _STR, "object"),  # fee counts reported: {"web_searches": 2}
        _col("user_id", "VARCHAR", _STR),  # the end user the call was made for
        _col("session_id", "VARCHAR", _STR),
        _col("feature", "VARCHAR", _STR),
        _col("tags", "MAP(VARCHAR, VARCHAR)", _STR, "object"),  # tags['team']
    ),
)

SPANS: Final = Table(
    "spans",
    (
        _col("trace_id", "VARCHAR NOT NULL", _STR),
        _col("span_id", "VARCHAR NOT NULL", _STR),
        _col("parent_span_id", "VARCHAR", _STR),
        _col("name", "VARCHAR NOT NULL", _STR),
        _col("kind", "VARCHAR", _STR),
        _col("start_ts", "TIMESTAMPTZ NOT NULL", _TS, "time"),
        _col("end_ts", "TIMESTAMPTZ", _TS, "time"),
        _col("duration_ms", "DOUBLE", _F64),
        _col("status_code", "VARCHAR", _STR),
        _col("status_message", "VARCHAR", _STR),
        _col("service_name", "VARCHAR", _STR),
        _col("scope_name", "VARCHAR", _STR),
        _col("is_genai", "BOOLEAN NOT NULL DEFAULT FALSE", _BOOL),
        _col("dialect", "VARCHAR", _STR),  # which alias set the GenAI columns came from
        _col("semconv_version", "VARCHAR", _STR),
        _col("operation", "VARCHAR", _STR),
        _col("provider", "VARCHAR", _STR),
        _col("request_model", "VARCHAR", _STR),
        _col("response_model", "VARCHAR", _STR),
        _col("response_id", "VARCHAR", _STR),
        _col("finish_reasons", "VARCHAR[]", pa.list_(_STR)),
        *_tokens(nullable=True),
        _col("error_type", "VARCHAR", _STR),
        _col("server_address", "VARCHAR", _STR),
        _col("purpose", "VARCHAR", _STR),
        _col("tenant", "VARCHAR", _STR),
        _col("org", "VARCHAR", _STR),
        _col("context", "VARCHAR", _STR),
        _col("profile_id", "VARCHAR", _STR),
        _col("profile_version", "INTEGER", _I32),
        _col("attempt", "INTEGER", _I32),
        _col("fallback_depth", "INTEGER", _I32),
        _col("cost_usd", MONEY_TYPE, _F64, "money"),
        _col("outcome", "VARCHAR", _STR),
        _col("attributes", "JSON", _STR),  # raw span attributes: re-normalise old data
        _col("resource", "JSON", _STR),
    ),
)

CIRCUIT_EVENTS: Final = Table(
    "circuit_events",
    (
        _col("event_id", "VARCHAR PRIMARY KEY", _STR),
        _col("ts", "TIMESTAMPTZ NOT NULL", _TS, "time"),
        _col("provider", "VARCHAR", _STR),
        _col("model", "VARCHAR", _STR),
        _col("state", "VARCHAR NOT NULL", _STR),  # opened | half_opened | closed
        _col("reason", "VARCHAR", _STR),
        _col("failures", "INTEGER", _I32),
        _col("calls", "INTEGER", _I32),
        _col("cooldown_s", "DOUBLE", _F64),
        _col("service_name", "VARCHAR", _STR),
        _col("attributes", "JSON", _STR),
    ),
)

PROFILE_EVENTS: Final = Table(
    "profile_events",
    (
        _col("event_id", "VARCHAR PRIMARY KEY", _STR),
        _col("ts", "TIMESTAMPTZ NOT NULL", _TS, "time"),
        _col("action", "VARCHAR NOT NULL", _STR),  # activated | rolled_back | warning
        _col("scope_kind", "VARCHAR", _STR),  # global | org | domain
        _col("scope_id", "VARCHAR", _STR),
        _col("purpose", "VARCHAR", _STR),
        _col("version", "INTEGER", _I32),
        _col("previous_version", "INTEGER", _I32),
        _col("model", "VARCHAR", _STR),
        _col("actor", "VARCHAR", _STR),
        _col("reason", "VARCHAR", _STR),
        _col("detail", "JSON", _STR),
        _col("service_name", "VARCHAR", _STR),
    ),
)

BUDGET_EVENTS: Final = Table(
    "budget_events",
    (
        _col("event_id", "VARCHAR PRIMARY KEY", _STR),
        _col("ts", "TIMESTAMPTZ NOT NULL", _TS, "time"),
        _col("day", "DATE", _STR),
        _col("kind", "VARCHAR NOT NULL", _STR),  # warning | exceeded | rejected
        _col("tenant", "VARCHAR", _STR),
        _col("context", "VARCHAR", _STR),
        _col("purpose", "VARCHAR", _STR),
        _col("cap_usd", MONEY_TYPE, _STR, "money"),
        _col("spent_usd", MONEY_TYPE, _STR, "money"),
        _col("reserved_usd", MONEY_TYPE, _STR, "money"),
        _col("service_name", "VARCHAR", _STR),
        _col("attributes", "JSON", _STR),
        _col("attribute", "VARCHAR", _STR),  # v9: a budget by attribution's `user=alice`
    ),
)

REJECTED_RECORDS: Final = Table(
    "rejected_records",
    (
        # Stable over re-deliveries of the same record: a retried request is kept once.
        _col("record_id", "VARCHAR PRIMARY KEY", _STR),
        _col("received_at", "TIMESTAMPTZ NOT NULL", _TS),
        _col("signal", "VARCHAR NOT NULL", _STR),  # traces | logs
        _col("target", "VARCHAR", _STR),  # the table it was bound for
        _col("reason", "VARCHAR NOT NULL", _STR),  # e.g. cost_out_of_range
        _col("detail", "VARCHAR", _STR),  # which value, and the allowed range
        _col("source", "VARCHAR", _STR),  # instrumentation scope, client address
        _col("attributes", "JSON", _STR),  # the record's raw attributes
        _col("row_data", "JSON", _STR),  # the row as it would have landed (when built)
    ),
    primary_key=(),
)

LANDED: Final[dict[str, Table]] = {
    t.name: t
    for t in (LLM_USAGE, SPANS, CIRCUIT_EVENTS, PROFILE_EVENTS, BUDGET_EVENTS, REJECTED_RECORDS)
}
"""Every table the collector lands into, by name."""

ALERT_DELIVERIES: Final = Table(
    "alert_deliveries",
    (
        # What the alert notifier (collector/_notify.py) did with each alert-worthy event,
        # per webhook: one row once an outcome is known (DuckDB's v8, PostgreSQL's v3).
        _col("event_id", "VARCHAR NOT NULL", _STR),
        _col("webhook", "VARCHAR NOT NULL", _STR),  # the webhook's name (never its URL)
        _col("kind", "VARCHAR NOT NULL", _STR),  # budget.warning | budget.exceeded | ...
        _col("status", "VARCHAR NOT NULL", _STR),  # delivered | failed
        _col("attempts", "INTEGER NOT NULL", _I32),
        _col("http_status", "INTEGER", _I32),
        _col("error", "VARCHAR", _STR),
        _col("first_attempt_ts", "TIMESTAMPTZ NOT NULL", _TS),
        _col("last_attempt_ts", "TIMESTAMPTZ NOT NULL", _TS),
    ),
    primary_key=("event_id", "webhook"),
)
"""Webhook deliveries of alerts (not landed: written by the notifier of a collector)."""
