"""Repricing past usage rows after prices change, with the rollup kept consistent.

Prices come from the one shared `comptroller.pricing.Pricer` (genai-prices, then the fallback
registry of the settings), so a repriced row gets exactly the cost the control plane or the
collector would give it now. Each (provider, response model, request model, UTC date) group
asks the pricer for its per-kind `coefficients` in force that date and the update runs in
SQL, tiers included (each tier is a row of the coefficient table, matched on the input
count). A model whose price changes with the time of day (off-peak rates) is priced row by
row with `Pricer.price` at each row's own timestamp, as are coefficients too fine for the
SQL decimal type: the results always equal the pricer's.

A model known to neither genai-prices nor the registry is unpriced (NULL cost, never 0), as
is a row whose counts are inconsistent (cache tokens above input tokens). Rows whose cost came
from the provider keep it. The control plane's estimated rows are repriced too: one charged
its reservation for want of a price (`reservation`) gets the price of its token counts once
one is known, and keeps its reservation while none is (or when it has no token counts: the
call ended before any usage was seen).

Price overrides (`[[control.price_overrides]]`) apply as the pricer applies them: by each
row's UTC day and, when some override is for one org, its org (the groups then include the
org). Each changed row keeps its provenance: `repriced_at`, the cost and price source it had
(`repriced_from_usd`, `repriced_from_source`) and the version of the prices applied
(`price_version`: genai-prices' package version, `registry-<digest>` of the fallback
registry, or `overrides-<digest>` of the overrides for a row an override priced). Unpriced calls are counted as `budget check` counts them (analytics/_unpriced.py).

A PostgreSQL ledger (`reprice_pg`) is priced by the same code: its candidate rows are read as
Arrow into an in-memory DuckDB table `llm_usage` and `_price_rows` runs there, so the costs,
price sources and provenance are DuckDB's to the digit. Only the store's parts differ: the
changed rows are copied back (ADBC COPY into a temporary table, one `UPDATE … FROM`), and the
rollups of the local days holding a changed row are recomputed from `llm_usage` under the
rollups' lock that landings respect (`collector._land_pg.lock_rollups`), all in one
transaction. Only the days repriced are recomputed: `--since` a recent day stays
proportional to its rows, and a repricing of everything costs about a full rebuild.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa

from comptroller.analytics._pg_schema import pg_type
from comptroller.analytics._rollup import apply_usage_batch, rollup_timezone
from comptroller.analytics._tables import MONEY_TYPE
from comptroller.analytics._unpriced import unpriced_sql
from comptroller.config._control import PriceSpec
from comptroller.config._prices import PriceOverride
from comptroller.errors import ComptrollerError, ConfigError
from comptroller.pricing import UNPRICED_SOURCE, PriceCoefficients, Pricer, Usage

if TYPE_CHECKING:
    from adbc_driver_postgresql.dbapi import Connection, Cursor

_COEF_SCALE = 18
_COEF = pa.decimal128(38, _COEF_SCALE)
_QUANTUM = Decimal(1).scaleb(-_COEF_SCALE)
_COEF_LIMIT = Decimal(10) ** (38 - _COEF_SCALE - 1)
_KINDS = ("per_request", "input", "cache_read", "cache_write", "output", "reasoning")
_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
"""The token columns of llm_usage, named as the fields of `Usage`."""


@dataclass(frozen=True, kw_only=True)
class RepriceLine:
    """Old and new totals of one provider:model."""

    provider: str
    model: str
    rows: int
    old_usd: Decimal
    new_usd: Decimal
    old_unpriced: int
    new_unpriced: int
    source: str
    """Where the new prices came from: genai-prices@<version>, fallback,
    override:<id>[@<list source>], unpriced, or mixed."""


@dataclass(frozen=True, kw_only=True)
class RepriceResult:
    """What `reprice` changed."""

    rows: int
    """Rows considered (not provider-priced, within the filters)."""
    changed: int
    """Rows whose cost or price source changed."""
    old_total_usd: Decimal
    new_total_usd: Decimal
    old_unpriced: int
    new_unpriced: int
    lines: tuple[RepriceLine, ...]
    rollup_groups: int
    """Rollup groups recomputed."""
    dry_run: bool
    repriced_at: dt.datetime
    """The time written to the changed rows' `repriced_at`."""


def reprice(
    con: duckdb.DuckDBPyConnection,
    *,
    since: dt.date | None = None,
    models: Sequence[str] = (),
    fallback_prices: Mapping[str, PriceSpec] | None = None,
    price_overrides: Sequence[PriceOverride] = (),
    pricer: Pricer | None = None,
    timezone: str | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> RepriceResult:
    """Recompute the cost of past usage rows and the rollup groups they belong to.

    Args:
        con: A writable connection (a collector must not be writing the file).
        since: First local day to reprice (default: all rows).
        models: Only these models (`model` or `provider:model`); default all.
        fallback_prices: `provider:model` → price, for models genai-prices does not know
            (ignored when `pricer` is given).
        price_overrides: Negotiated prices applied on top (ignored when `pricer` is given:
            its own overrides apply).
        pricer: The pricer (default: `Pricer(fallback_prices, overrides=price_overrides)`).
        timezone: Time zone of the days (default: the rollup's, else UTC).
        dry_run: Compute and report, change nothing.
        now: The time recorded as `repriced_at` (default: now).

    Returns:
        Old and new totals, overall and per model.
    """
    zone = timezone or rollup_timezone(con) or "UTC"
    pricer = pricer or Pricer(fallback_prices, overrides=price_overrides)
    stamp = _Stamp(
        at=now or dt.datetime.now(dt.UTC),
        registry=registry_version(fallback_prices or {}),
        overrides=overrides_version(pricer.overrides),
    )
    con.execute("BEGIN TRANSACTION").fetchall()
    try:
        result = _reprice(con, since, models, zone, pricer, dry_run, stamp)
    except BaseException:
        con.execute("ROLLBACK").fetchall()
        raise
    con.execute("ROLLBACK" if dry_run else "COMMIT").fetchall()
    return result


def _model(p: str = "") -> str:
    return f"coalesce({p}response_model, {p}request_model, '')"


def _filters(
    since: dt.date | None, models: Sequence[str], zone: str, p: str = ""
) -> tuple[str, dict[str, object]]:
    """The rows to reprice, as SQL over llm_usage (columns prefixed with `p`)."""
    clauses = [f"{p}price_source <> 'provider'"]
    params: dict[str, object] = {}
    if since is not None:
        clauses.append(f"{p}ts >= $since")
        params["since"] = dt.datetime.combine(since, dt.time(), tzinfo=ZoneInfo(zone))
    if models:
        clauses.append(
            f"({_model(p)} IN (SELECT unnest($models)) "
            f"OR coalesce({p}provider, '') || ':' || {_model(p)} IN (SELECT unnest($models)))"
        )
        params["models"] = list(models)
    return " AND ".join(clauses), params


def _totals(con: duckdb.DuckDBPyConnection, where: str, params: dict[str, object]) -> _Totals:
    rows = con.execute(
        f"""
        SELECT coalesce(provider, ''), {_model()}, count(*), coalesce(sum(cost_usd), 0),
               count(*) FILTER (WHERE {unpriced_sql()}),
               CASE WHEN count(DISTINCT price_source) = 1 THEN any_value(price_source)
                    ELSE 'mixed' END
        FROM llm_usage WHERE {where} GROUP BY ALL
        """,
        params,
    ).fetchall()
    return {(p, m): (int(n), Decimal(c), int(u), str(s)) for p, m, n, c, u, s in rows}


_Totals = dict[tuple[str, str], tuple[int, Decimal, int, str]]
"""(provider, model) -> (rows, cost, unpriced calls, price source or `mixed`)."""
_Group = tuple[str, str | None, str | None, str | None, dt.date]
"""(provider, response model, request model, org or None when no override is per org, day)."""


def _reprice(
    con: duckdb.DuckDBPyConnection,
    since: dt.date | None,
    models: Sequence[str],
    zone: str,
    pricer: Pricer,
    dry_run: bool,
    stamp: _Stamp,
) -> RepriceResult:
    where, params = _filters(since, models, zone)
    before = _totals(con, where, params)
    changed = _price_rows(con, since, models, zone, pricer, stamp)
    groups_recomputed = 0
    if changed:
        groups_recomputed = apply_usage_batch(
            con, _rollup_keys(con, where, params, zone), timezone=zone
        )
    after = _totals(con, where, params)
    return _result(before, after, changed, groups_recomputed, dry_run, stamp)


def _rollup_keys(
    con: duckdb.DuckDBPyConnection, where: str, params: dict[str, object], zone: str
) -> pa.Table:
    """The rollup keys of the rows considered (one row per local day and group)."""
    return con.sql(
        f"""
        SELECT min(ts) AS ts, tenant, org, context, purpose, provider, request_model,
               response_model
        FROM llm_usage WHERE {where}
        GROUP BY timezone($tz, ts)::DATE, tenant, org, context, purpose, provider,
                 request_model, response_model
        """,
        params={**params, "tz": zone},
    ).to_arrow_table()


def _price_rows(
    con: duckdb.DuckDBPyConnection,
    since: dt.date | None,
    models: Sequence[str],
    zone: str,
    pricer: Pricer,
    stamp: _Stamp,
) -> int:
    """Reprice the rows of `llm_usage` the filters select, in place, with their provenance;
    the number of rows changed. The one pricing path of every store: a DuckDB ledger runs it
    on its own table, a PostgreSQL ledger on a DuckDB copy of its candidate rows."""
    where, params = _filters(since, models, zone)
    # An org changes the price only when some override is for one org: otherwise the groups
    # leave it out (fewer groups, one coefficient row per model, day and tier).
    by_org = pricer.org_specific
    # UTC dates: genai-prices' price changes take effect at UTC midnight, whatever the zone,
    # and the overrides' windows are UTC days.
    groups = con.execute(
        f"""
        SELECT coalesce(provider, ''), response_model, request_model,
               {"org" if by_org else "NULL::VARCHAR"}, timezone('UTC', ts)::DATE AS day
        FROM llm_usage WHERE {where} GROUP BY ALL
        """,
        params,
    ).fetchall()
    coefficient_rows: list[dict[str, Any]] = []
    row_by_row: list[_Group] = []
    for provider, response_model, request_model, org, day in groups:
        model = pricer.priced_model(provider, response_model, request_model)
        at = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        found = pricer.coefficients(provider, model, at, org=org) if model else None
        group = (provider, response_model, request_model, org, day)
        if found is not None and (found.time_of_day or not _fits_sql(found)):
            row_by_row.append(group)
            continue
        coefficient_rows.extend(_coefficient_rows(group, found))
    changed = 0
    if coefficient_rows:
        changed += _update_in_sql(con, since, models, zone, coefficient_rows, stamp, by_org)
    if row_by_row:
        changed += _update_row_by_row(con, where, params, pricer, row_by_row, stamp, by_org)
    return changed


def _result(
    before: _Totals,
    after: _Totals,
    changed: int,
    groups_recomputed: int,
    dry_run: bool,
    stamp: _Stamp,
) -> RepriceResult:
    lines = tuple(
        RepriceLine(
            provider=key[0],
            model=key[1],
            rows=before[key][0],
            old_usd=before[key][1],
            new_usd=after[key][1],
            old_unpriced=before[key][2],
            new_unpriced=after[key][2],
            source=after[key][3],
        )
        for key in sorted(before, key=lambda k: (-before[k][1], k))
    )
    return RepriceResult(
        rows=sum(line.rows for line in lines),
        changed=changed,
        old_total_usd=sum((line.old_usd for line in lines), Decimal(0)),
        new_total_usd=sum((line.new_usd for line in lines), Decimal(0)),
        old_unpriced=sum(line.old_unpriced for line in lines),
        new_unpriced=sum(line.new_unpriced for line in lines),
        lines=lines,
        rollup_groups=groups_recomputed,
        dry_run=dry_run,
        repriced_at=stamp.at,
    )


@dataclass(frozen=True, kw_only=True)
class _Stamp:
    """The provenance a repricing writes: when, and the fallback registry's and the price
    overrides' versions."""

    at: dt.datetime
    registry: str
    overrides: str


def registry_version(prices: Mapping[str, PriceSpec]) -> str:
    """`registry-<digest>`: the version of a fallback registry (changes with any price)."""
    canonical = json.dumps(
        {key: spec.model_dump(mode="json") for key, spec in sorted(prices.items())},
        sort_keys=True,
    )
    return "registry-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def overrides_version(overrides: Sequence[PriceOverride]) -> str:
    """`overrides-<digest>`: the version of a set of price overrides (changes with any)."""
    canonical = json.dumps(
        sorted(
            (override.model_dump(mode="json") for override in overrides),
            key=lambda o: json.dumps(o, sort_keys=True),
        ),
        sort_keys=True,
    )
    return "overrides-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _provenance(source: str) -> str:
    """SET clauses recording what a row had before, given the SQL of its new price source."""
    return (
        "repriced_at = $repriced_at, repriced_from_usd = u.cost_usd, "
        "repriced_from_source = u.price_source, "
        f"price_version = CASE WHEN {source} LIKE 'override:%' THEN $overrides "
        f"WHEN {source} LIKE 'genai-prices@%' "
        f"THEN split_part({source}, '@', 2) "
        f"WHEN {source} = 'fallback' THEN $registry ELSE NULL END"
    )


def _keeps_reservation(source: str) -> str:
    """SQL: a reservation row that has nothing better to get (no usage, or still no price)."""
    return (
        f"(u.price_source = 'reservation' AND (u.input_tokens + u.output_tokens = 0 "
        f"OR {source} = 'unpriced'))"
    )


def _fits_sql(found: PriceCoefficients) -> bool:
    """Whether every coefficient is exact in the SQL coefficient type (DECIMAL(38, 18))."""
    for tier in found.tiers:
        for kind in _KINDS:
            value: Decimal = getattr(tier, kind)
            if abs(value) >= _COEF_LIMIT or value != value.quantize(_QUANTUM):
                return False
    return True


def _coefficient_rows(group: _Group, found: PriceCoefficients | None) -> list[dict[str, Any]]:
    provider, response_model, request_model, org, day = group
    key = {
        "provider": provider,
        "response_model": response_model,
        "request_model": request_model,
        "org": org,
        "day": day,
    }
    if found is None:
        zero = dict.fromkeys((f"k_{kind}" for kind in _KINDS), Decimal(0))
        return [{**key, "above": None, "upto": None, **zero, "source": UNPRICED_SOURCE}]
    return [
        {
            **key,
            "above": tier.above,
            "upto": tier.upto,
            **{f"k_{kind}": getattr(tier, kind) for kind in _KINDS},
            "source": found.source,
        }
        for tier in found.tiers
    ]


# The arithmetic of `Pricer.price` (comptroller.pricing.TierCoefficients), exact in DECIMAL;
# the cast to the column's DECIMAL(20, 10) rounds as the landing's cast of a cost string does.
_CONSISTENT = (
    "u.cache_read_tokens + u.cache_write_tokens <= u.input_tokens"
    " AND u.reasoning_tokens <= u.output_tokens"
    " AND least(u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,"
    " u.reasoning_tokens) >= 0"
)
_NEW_COST = (
    f"CASE WHEN c.source = '{UNPRICED_SOURCE}' OR NOT ({_CONSISTENT}) THEN NULL ELSE CAST("
    "c.k_per_request"
    " + c.k_input * (u.input_tokens - u.cache_read_tokens - u.cache_write_tokens)"
    " + c.k_cache_read * u.cache_read_tokens + c.k_cache_write * u.cache_write_tokens"
    " + c.k_output * (u.output_tokens - u.reasoning_tokens)"
    " + c.k_reasoning * u.reasoning_tokens AS DECIMAL(20, 10)) END"
)
_NEW_SOURCE = f"CASE WHEN {_CONSISTENT} THEN c.source ELSE '{UNPRICED_SOURCE}' END"


def _update_in_sql(
    con: duckdb.DuckDBPyConnection,
    since: dt.date | None,
    models: Sequence[str],
    zone: str,
    rows: list[dict[str, Any]],
    stamp: _Stamp,
    by_org: bool,
) -> int:
    schema = pa.schema(
        [
            ("provider", pa.string()),
            ("response_model", pa.string()),
            ("request_model", pa.string()),
            ("org", pa.string()),
            ("day", pa.date32()),
            ("above", pa.int64()),
            ("upto", pa.int64()),
        ]
        + [(f"k_{kind}", _COEF) for kind in _KINDS]
        + [("source", pa.string())]
    )
    where, params = _filters(since, models, zone, p="u.")
    name = f"_comptroller_prices_{uuid.uuid4().hex}"
    con.register(name, pa.Table.from_pylist(rows, schema=schema))
    try:
        result = con.execute(
            f"""
            UPDATE llm_usage AS u
            SET cost_usd = {_NEW_COST}, price_source = {_NEW_SOURCE}, {_provenance(_NEW_SOURCE)}
            FROM {name} AS c
            WHERE coalesce(u.provider, '') = c.provider
              AND u.response_model IS NOT DISTINCT FROM c.response_model
              AND u.request_model IS NOT DISTINCT FROM c.request_model
              AND {"u.org IS NOT DISTINCT FROM c.org" if by_org else "TRUE"}
              AND timezone('UTC', u.ts)::DATE = c.day
              AND (c.above IS NULL OR u.input_tokens > c.above)
              AND (c.upto IS NULL OR u.input_tokens <= c.upto)
              AND {where}
              AND NOT {_keeps_reservation(_NEW_SOURCE)}
              AND ({_NEW_COST} IS DISTINCT FROM u.cost_usd OR {_NEW_SOURCE} <> u.price_source)
            """,
            {
                **params,
                "repriced_at": stamp.at,
                "registry": stamp.registry,
                "overrides": stamp.overrides,
            },
        ).fetchall()
    finally:
        con.unregister(name)
    return int(result[0][0]) if result else 0


def _update_row_by_row(
    con: duckdb.DuckDBPyConnection,
    where: str,
    params: dict[str, object],
    pricer: Pricer,
    groups: list[_Group],
    stamp: _Stamp,
    by_org: bool,
) -> int:
    priced: list[dict[str, Any]] = []
    org_clause = "AND org IS NOT DISTINCT FROM $org" if by_org else ""
    for provider, response_model, request_model, org, day in groups:
        model = pricer.priced_model(provider, response_model, request_model)
        rows = con.execute(
            f"""
            SELECT usage_id, epoch_us(ts), {", ".join(_TOKENS)}
            FROM llm_usage
            WHERE {where} AND coalesce(provider, '') = $p
              AND response_model IS NOT DISTINCT FROM $response_model
              AND request_model IS NOT DISTINCT FROM $request_model
              AND timezone('UTC', ts)::DATE = $day {org_clause}
            """,
            {
                **params,
                "p": provider,
                "response_model": response_model,
                "request_model": request_model,
                "day": day,
                **({"org": org} if by_org else {}),
            },
        ).fetchall()
        for usage_id, epoch_us, *counts in rows:
            at = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=epoch_us)
            usage = Usage(**dict(zip(_TOKENS, counts, strict=True)))
            price = pricer.price(provider, model or "", usage, at, org)
            cost = None if price.cost_usd is None else str(price.cost_usd)
            priced.append({"usage_id": usage_id, "cost": cost, "source": price.source})
    name = f"_comptroller_exact_{uuid.uuid4().hex}"
    table = pa.Table.from_pylist(
        priced,
        schema=pa.schema(
            [("usage_id", pa.string()), ("cost", pa.string()), ("source", pa.string())]
        ),
    )
    con.register(name, table)
    try:
        # The cost travels as its decimal string and is cast as the landing casts it.
        result = con.execute(
            f"""
            UPDATE llm_usage AS u
            SET cost_usd = CAST(x.cost AS DECIMAL(20, 10)), price_source = x.source,
                {_provenance("x.source")}
            FROM {name} AS x
            WHERE u.usage_id = x.usage_id
              AND NOT {_keeps_reservation("x.source")}
              AND (CAST(x.cost AS DECIMAL(20, 10)) IS DISTINCT FROM u.cost_usd
                   OR x.source <> u.price_source)
            """,
            {"repriced_at": stamp.at, "registry": stamp.registry, "overrides": stamp.overrides},
        ).fetchall()
    finally:
        con.unregister(name)
    return int(result[0][0]) if result else 0


# --- a PostgreSQL ledger ------------------------------------------------------------------

_CANDIDATE_COLUMNS: Final = (
    "usage_id",
    "ts",
    "tenant",
    "org",
    "context",
    "purpose",
    "provider",
    "request_model",
    "response_model",
    *_TOKENS,
    "cost_usd",
    "price_source",
    "repriced_at",
    "repriced_from_usd",
    "repriced_from_source",
    "price_version",
)
"""What the pricing reads and writes of a row (the money columns travel as text)."""
_MONEY_COLUMNS: Final = ("cost_usd", "repriced_from_usd")
_WRITTEN: Final = (
    "cost_usd",
    "price_source",
    "repriced_at",
    "repriced_from_usd",
    "repriced_from_source",
    "price_version",
)
"""The columns a repricing changes."""
_ROLLUPS: Final = ("llm_usage_daily", "llm_budget_daily", "llm_usage_hourly")
_REPRICE_LOCK: Final = "comptroller.reprice"
"""Advisory lock (hashed) held by a repricing of a PostgreSQL ledger: one at a time."""


def reprice_pg(
    con: Connection,
    *,
    since: dt.date | None = None,
    models: Sequence[str] = (),
    fallback_prices: Mapping[str, PriceSpec] | None = None,
    price_overrides: Sequence[PriceOverride] = (),
    pricer: Pricer | None = None,
    timezone: str | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> RepriceResult:
    """`reprice` on a PostgreSQL ledger (an ADBC connection as its owner; commits `con`).

    The pricing is `reprice`'s own: the candidate rows (not provider-priced, within the
    filters) are read as Arrow into an in-memory DuckDB table named `llm_usage` and priced
    there by the same code, provenance included. The rows it changed are copied into a
    temporary table (ADBC binary COPY) and written back with one `UPDATE llm_usage … FROM`,
    guarded on each row's cost and price source being what was read (a row changed in
    between is left alone). The rollups of every local day holding a changed row are then
    recomputed from `llm_usage`, under `collector._land_pg.lock_rollups`, which a landing's
    rollup upserts respect: a collector landing meanwhile is neither missed nor counted
    twice. All of it is one transaction; a dry run rolls it back.

    Raises:
        ConfigError: The connection's role may not rewrite the ledger (a reader bound by
            row-level security, or a role without UPDATE on it): run it as the owner.
    """
    from comptroller.collector._land_pg import lock_rollups, rebuild_rollup_days_pg

    pricer = pricer or Pricer(fallback_prices, overrides=price_overrides)
    stamp = _Stamp(
        at=now or dt.datetime.now(dt.UTC),
        registry=registry_version(fallback_prices or {}),
        overrides=overrides_version(pricer.overrides),
    )
    con.rollback()  # a transaction of our own
    cur = con.cursor()
    try:
        _check_owner(cur)
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [_REPRICE_LOCK])
        cur.fetchall()
        zone = timezone or _pg_rollup_zone(cur) or "UTC"
        local = duckdb.connect()
        try:
            candidates = _pg_candidates(cur, since, models, zone)
            local.register("_candidates", candidates)
            money = {c: f"CAST({c} AS {MONEY_TYPE}) AS {c}" for c in _MONEY_COLUMNS}
            local.execute(
                "CREATE TABLE llm_usage AS SELECT "
                + ", ".join(money.get(c, c) for c in _CANDIDATE_COLUMNS)
                + " FROM _candidates"
            ).fetchall()
            local.unregister("_candidates")
            local.execute(
                f"CREATE TABLE _read AS SELECT usage_id, {', '.join(_WRITTEN)} FROM llm_usage"
            ).fetchall()
            where, params = _filters(since, models, zone)
            before = _totals(local, where, params)
            changed = _price_rows(local, since, models, zone, pricer, stamp)
            after = _totals(local, where, params)
            groups = 0
            if changed:
                # The groups `reprice` recomputes on DuckDB, reported alike.
                groups = _group_count(local, where, params, zone)
            if changed and not dry_run:
                changes = _changes(local, zone)
                changed = _write_back(cur, changes)
                days = changes.column("day").to_pylist()
                lock_rollups(cur)
                rebuild_rollup_days_pg(cur, days, timezone=zone)
        finally:
            local.close()
        if dry_run:
            con.rollback()
        else:
            con.commit()
    except ComptrollerError:
        con.rollback()
        raise
    except Exception as exc:
        with contextlib.suppress(Exception):
            con.rollback()
        if getattr(exc, "sqlstate", None) is None:
            raise  # not the database's refusal: a bug, with its traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"the PostgreSQL ledger refused the repricing: {first}; nothing was changed "
            "(one transaction): fix that and run it again"
        ) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            con.rollback()
        raise
    finally:
        cur.close()
    return _result(before, after, changed, groups, dry_run, stamp)


def _check_owner(cur: Cursor) -> None:
    """Refuse a role that may not rewrite every row (a reader bound by row-level security)."""
    # has_table_privilege with a list is true when any one is held: one call each.
    privileges = " AND ".join(
        f"has_table_privilege('{table}', '{privilege}')"
        for table, wanted in (
            ("llm_usage", ("SELECT", "UPDATE")),
            *((rollup, ("SELECT", "INSERT", "UPDATE", "DELETE")) for rollup in _ROLLUPS),
        )
        for privilege in wanted
    )
    cur.execute(
        "SELECT current_user, pg_get_userbyid(c.relowner), "
        "pg_has_role(current_user, c.relowner, 'USAGE') OR r.rolbypassrls OR r.rolsuper, "
        f"{privileges} FROM pg_class AS c, pg_roles AS r "
        "WHERE c.oid = to_regclass('llm_usage') AND r.rolname = current_user"
    )
    found = cur.fetchall()
    if not found:
        raise ConfigError(
            "no ledger in this database or schema (no llm_usage table): check --db's "
            "?schema=, or let a collector create the ledger first"
        )
    role, owner, unbound, may_write = found[0]
    if not (unbound and may_write):
        why = (
            "is bound by the ledger's row-level security (it sees only some rows)"
            if not unbound
            else "may not update the usage rows and the rollups"
        )
        raise ConfigError(
            f"reprice rewrites every row's cost and the rollups, and role {role!r} {why}: "
            f"run it as the ledger's owner, {owner!r} (the collectors' role): "
            f"--db postgresql://{owner}@host/db?schema=…"
        )


def _pg_rollup_zone(cur: Cursor) -> str | None:
    cur.execute("SELECT value FROM comptroller_meta WHERE key = 'rollup_timezone'")
    rows = cur.fetchall()
    return str(rows[0][0]) if rows else None


def _pg_candidates(
    cur: Cursor, since: dt.date | None, models: Sequence[str], zone: str
) -> pa.Table:
    """The rows `reprice` may change, read from PostgreSQL as Arrow (a superset of what
    `_filters` selects: the pricing applies that itself)."""
    text = set(_MONEY_COLUMNS)
    select = ", ".join(f"{c}::TEXT AS {c}" if c in text else c for c in _CANDIDATE_COLUMNS)
    clauses = ["price_source <> 'provider'"]
    params: list[Any] = []
    if since is not None:
        params.append(dt.datetime.combine(since, dt.time(), tzinfo=ZoneInfo(zone)))
        clauses.append(f"ts >= ${len(params)}")
    if models:
        for name in models:
            params.append(name)
        names = ", ".join(
            f"${i}::TEXT" for i in range(len(params) - len(models) + 1, len(params) + 1)
        )
        model = "coalesce(response_model, request_model, '')"
        clauses.append(
            f"({model} IN ({names}) OR coalesce(provider, '') || ':' || {model} IN ({names}))"
        )
    cur.execute(f"SELECT {select} FROM llm_usage WHERE {' AND '.join(clauses)}", params or None)
    table = cur.fetch_arrow_table()
    # PostgreSQL gives TIMESTAMPTZ as UTC microseconds: the same instants DuckDB reads.
    return table


def _group_count(
    con: duckdb.DuckDBPyConnection, where: str, params: dict[str, object], zone: str
) -> int:
    """How many rollup groups (local day and key) the rows considered fall in."""
    rows = con.execute(
        f"""
        SELECT count(*) FROM (
            SELECT DISTINCT timezone($tz, ts)::DATE, coalesce(tenant, ''), coalesce(org, ''),
                   coalesce(context, ''), coalesce(purpose, ''), coalesce(provider, ''),
                   {_model()}
            FROM llm_usage WHERE {where})
        """,
        {**params, "tz": zone},
    ).fetchall()
    return int(rows[0][0]) if rows else 0


def _changes(con: duckdb.DuckDBPyConnection, zone: str) -> pa.Table:
    """The rows the pricing changed: their new values, what they held when read, and their
    local day (whose rollups are recomputed)."""
    differs = " OR ".join(f"n.{c} IS DISTINCT FROM o.{c}" for c in _WRITTEN)
    return con.sql(
        f"""
        SELECT n.usage_id, CAST(n.cost_usd AS VARCHAR) AS cost_usd, n.price_source,
               timezone('UTC', n.repriced_at) AS repriced_at,
               CAST(n.repriced_from_usd AS VARCHAR) AS repriced_from_usd,
               n.repriced_from_source, n.price_version,
               CAST(o.cost_usd AS VARCHAR) AS read_cost, o.price_source AS read_source,
               timezone($tz, n.ts)::DATE AS day
        FROM llm_usage AS n JOIN _read AS o USING (usage_id)
        WHERE {differs}
        ORDER BY n.usage_id
        """,
        params={"tz": zone},
    ).to_arrow_table()


def _write_back(cur: Cursor, changes: pa.Table) -> int:
    """Copy the changes into a temporary table and update llm_usage from it; rows updated."""
    staged = changes.select(
        [
            "usage_id",
            "cost_usd",
            "price_source",
            "repriced_at",
            "repriced_from_usd",
            "repriced_from_source",
            "price_version",
            "read_cost",
            "read_source",
        ]
    )
    staged = staged.set_column(
        3, "repriced_at", staged.column("repriced_at").cast(pa.timestamp("us", tz="UTC"))
    )
    cur.execute("DROP TABLE IF EXISTS _reprice_changes")
    cur.execute(
        "CREATE TEMP TABLE _reprice_changes (usage_id TEXT, cost_usd TEXT, price_source TEXT, "
        "repriced_at TIMESTAMPTZ, repriced_from_usd TEXT, repriced_from_source TEXT, "
        "price_version TEXT, read_cost TEXT, read_source TEXT) ON COMMIT DROP"
    )
    cur.adbc_ingest("_reprice_changes", staged, mode="append", temporary=True)
    # Statistics of the staged rows let the planner join them by hash when they are many.
    cur.execute("ANALYZE _reprice_changes")
    money = pg_type(MONEY_TYPE)
    cur.execute(
        f"""
        UPDATE llm_usage AS u
        SET cost_usd = CAST(c.cost_usd AS {money}), price_source = c.price_source,
            repriced_at = c.repriced_at,
            repriced_from_usd = CAST(c.repriced_from_usd AS {money}),
            repriced_from_source = c.repriced_from_source, price_version = c.price_version
        FROM _reprice_changes AS c
        WHERE u.usage_id = c.usage_id
          AND u.cost_usd IS NOT DISTINCT FROM CAST(c.read_cost AS {money})
          AND u.price_source = c.read_source
        """
    )
    return max(int(cur.rowcount), 0)
