"""The reader over a PostgreSQL ledger: DuckDB SQL over PostgreSQL's rows answers what the
same SQL answers over a DuckDB ledger filled with the same batches.

Both ledgers are filled by the real landers (`PgLander`, `Lander`) with batches from the
collector's decoding path; PostgreSQL is the real local server, a schema per test.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from comptroller import analytics
from comptroller.analytics import DuckDBReader, Limits, QueryError, QueryTimeout, truncated_at
from comptroller.analytics._pg_reader import _PUSHDOWN, PgReader, duckdb_catalog
from comptroller.analytics._pg_schema import connect_pg, libpq_url
from comptroller.errors import ConfigError, UsageError

from ._pg_ledger import fill, ledger_url, pg_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def ledgers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """(PostgreSQL ledger URL, DuckDB file, usage rows): the same batches landed in both."""
    with pg_schema(postgres_url) as schema:
        duck = tmp_path / "ledger.duckdb"
        rows = fill(postgres_url, schema, duck)
        yield ledger_url(postgres_url, schema), duck, rows


def _normal(value: Any) -> Any:
    """JSON text compared as JSON (jsonb orders keys and spaces its text its own way)."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _same(pg: pa.Table, duck: pa.Table, *, stamped: bool = False) -> None:
    """Equal tables; `stamped`: rows of events each lander stamps with its own landing
    instant and id (budget events), compared without those, in any order."""
    # Instants are compared as instants: DuckDB labels them with its session's zone, the
    # budget state answered in PostgreSQL with UTC.
    assert _zone_free(pg.schema) == _zone_free(duck.schema)
    ours, theirs = _normal(pg.to_pylist()), _normal(duck.to_pylist())
    if stamped:
        ours, theirs = (
            sorted(
                ({k: v for k, v in r.items() if k not in _STAMPED} for r in t),
                key=lambda r: re.sub(r"tzinfo=[^)]*\)\)?", "", repr(r)),
            )
            for t in (ours, theirs)
        )
    assert ours == theirs


_STAMPED = ("ts", "event_id", "projected_usd")
"""What differs between two ledgers landing the same rows at two instants: when an event was
recorded, and a projected-overrun warning's projection (the burn rate at that instant)."""


def _zone_free(schema: pa.Schema) -> str:
    """The schema's text without time zone labels and list item names (`l`, `item`)."""
    text = "\n".join(f"{field.name}: {field.type}" for field in schema)
    text = re.sub(r"tz=[A-Za-z_/]+", "tz", text)
    return re.sub(r"(list<|child 0, )\w+:", r"\1", text)


QUERIES = (
    "SELECT * FROM llm_usage ORDER BY usage_id",
    "FROM llm_usage_daily ORDER BY ALL",
    "SELECT * FROM llm_budget_daily ORDER BY day, tenant, context, purpose",
    "FROM llm_usage_hourly ORDER BY ALL",
    # Budget events are stamped by each lander at its landing: all but that instant (and a
    # projection's figure, made at it).
    "SELECT * EXCLUDE (event_id, ts, attributes), "
    "attributes->>'$.\"comptroller.budget.warning_kind\"' AS warning_kind "
    "FROM budget_events ORDER BY kind, tenant, context, purpose, day, spent_usd, warning_kind",
    "SELECT * FROM spans ORDER BY trace_id, span_id",
    "SELECT tenant, org, tags['team'] AS team, sum(cost_usd) AS usd, count(*) AS n "
    "FROM llm_usage GROUP BY ALL ORDER BY ALL",
    # Columns and types (a view over fetched rows keeps no NOT NULL).
    "SELECT column_name, column_type FROM (DESCRIBE llm_usage)",
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_name = 'llm_budget_daily' ORDER BY ordinal_position",
    "SELECT count(*) AS n FROM alert_deliveries",
    "SELECT value FROM comptroller_meta WHERE key = 'rollup_timezone'",
)


@pytest.mark.parametrize("sql", QUERIES)
def test_duckdb_sql_over_postgres_equals_the_duckdb_ledger(
    ledgers: tuple[str, Path, int], sql: str
) -> None:
    url, duck, rows = ledgers
    with PgReader(url) as pg, analytics.open_reader(db=duck) as local:
        ours = pg.query(sql)
        theirs = local.query(sql)
    if "llm_usage ORDER BY usage_id" in sql:
        assert ours.num_rows == rows > 200  # every row, the derived one included
    _same(ours, theirs)


def test_every_shipped_panel_answers_as_on_duckdb(ledgers: tuple[str, Path, int]) -> None:
    url, duck, _ = ledgers
    panels = analytics.builtin_panels()
    now = dt.datetime.now(dt.UTC)  # one instant for both: burn rates divide by the hours
    ran = 0
    with PgReader(url) as pg, analytics.open_reader(db=duck) as local:
        for panel in panels:
            name = panel.name
            try:
                theirs = analytics.run_panel(local, panel, now=now)
            except UsageError:  # a required parameter (trace_spans' trace id)
                continue
            ours = analytics.run_panel(pg, panel, now=now)
            try:
                _same(ours, theirs, stamped="budget_events" in panel.sql)
            except AssertionError as exc:
                raise AssertionError(f"panel {name}: {exc}") from None
            ran += 1
        [trace] = local.query("SELECT trace_id FROM spans").column(0).to_pylist()
        traced = panels["trace_spans"]
        _same(
            analytics.run_panel(pg, traced, trace_id=trace),
            analytics.run_panel(local, traced, trace_id=trace),
        )
    assert ran >= 25


def test_budget_state_runs_in_postgres_and_equals_duckdb(ledgers: tuple[str, Path, int]) -> None:
    url, duck, _ = ledgers
    now = dt.datetime.now(dt.UTC)
    with PgReader(url) as pg, analytics.open_reader(db=duck) as local:
        ours = analytics.budget_state(pg, now=now)
        theirs = analytics.budget_state(local, now=now)
        before = pg.fetched_rows
        analytics.budget_state(pg, now=now)
        assert pg.fetched_rows == before  # answered in PostgreSQL: no row pulled into DuckDB
    assert ours == theirs
    assert any(s.status == "refused" for s in ours)


def test_panel_time_range_is_pushed_into_the_fetch(ledgers: tuple[str, Path, int]) -> None:
    url, duck, rows = ledgers
    panel = analytics.builtin_panels()["recent_calls"]
    with PgReader(url) as pg, analytics.open_reader(db=duck) as local:
        [[newest]] = local.query("SELECT max(ts) FROM llm_usage").to_pydict().values()
        since = newest - dt.timedelta(microseconds=1)
        ours = analytics.run_panel(pg, panel, since=since)
        assert 0 < pg.fetched_rows < rows  # only the rows in range left PostgreSQL
        _same(ours, analytics.run_panel(local, panel, since=since))


@pytest.mark.parametrize("name", sorted(_PUSHDOWN))
def test_each_pushed_range_is_the_panels_only_read_of_its_table(name: str) -> None:
    bound = _PUSHDOWN[name]
    sql = analytics.builtin_panels()[name].sql
    # One read of the table, bounded by the same parameters the fetch is bounded by.
    assert len(re.findall(rf"\b{bound.table}\b", sql)) == 1
    for param, op in ((bound.lower, ">="), (bound.upper, "<")):
        if param is not None:
            assert re.search(rf"\b{bound.column} {op} \${param}::TIMESTAMPTZ", sql), param


def test_writes_are_refused_and_change_nothing(ledgers: tuple[str, Path, int]) -> None:
    url, _, rows = ledgers
    with PgReader(url) as pg:
        for sql in (
            "DELETE FROM llm_usage",
            "CREATE TABLE x AS SELECT 1",
            "COPY llm_usage TO '/tmp/x.csv'",
            "SELECT 1; DELETE FROM llm_usage",
            "ATTACH 'postgres:dbname=test' AS pg (TYPE postgres)",
        ):
            with pytest.raises(QueryError):
                pg.query(sql)
        assert pg.query("SELECT count(*) AS n FROM llm_usage").column(0).to_pylist() == [rows]


def test_limits_cut_rows_and_stop_long_queries(ledgers: tuple[str, Path, int]) -> None:
    url, _, rows = ledgers
    with PgReader(url, limits=Limits(max_rows=10)) as pg:
        table = pg.query("SELECT usage_id FROM llm_usage")
        assert table.num_rows == 10
        assert truncated_at(table) == 10
        assert truncated_at(pg.query("SELECT 1 AS one")) is None
    with PgReader(url, limits=Limits(timeout_s=0.3, setting="the test")) as pg:
        with pytest.raises(QueryTimeout, match="the test"):
            pg.query(
                "SELECT count(*) FROM llm_usage a, llm_usage b, llm_usage c, "
                "range(1000) r WHERE a.cost_usd * r.range > b.cost_usd + c.cost_usd"
            )
        assert pg.query("SELECT count(*) FROM llm_usage").column(0).to_pylist() == [rows]


def test_a_missing_ledger_or_server_says_what_to_do(postgres_url: str) -> None:
    with pg_schema(postgres_url) as schema:
        connect_pg(postgres_url, schema=schema).close()  # an empty schema
        with (
            PgReader(ledger_url(postgres_url, "public_no_such_schema")) as pg,
            pytest.raises(analytics.ReaderUnavailable, match="no ledger here"),
        ):
            pg.query("SELECT count(*) FROM llm_usage")
    closed = re.sub(r"@[^/]+/", "@127.0.0.1:1/", libpq_url(postgres_url))
    with pytest.raises(ConfigError, match="cannot connect"):
        PgReader(closed)


def test_the_reader_is_shared_by_threads(ledgers: tuple[str, Path, int]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, duck, _ = ledgers
    sql = "SELECT tenant, sum(cost_usd) AS usd FROM llm_usage GROUP BY ALL ORDER BY ALL"
    with PgReader(url) as pg, analytics.open_reader(db=duck) as local:
        expected = local.query(sql)
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: pg.query(sql), range(24)))
    assert all(r.equals(expected) for r in results)


def test_the_type_catalog_is_the_duckdb_ledgers() -> None:
    catalog = duckdb_catalog()
    assert dict(catalog["llm_usage"])["tags"] == "MAP(VARCHAR, VARCHAR)"
    assert dict(catalog["llm_usage"])["cost_usd"] == "DECIMAL(20,10)"
    assert {"spans", "span_rows", "alert_deliveries", "llm_usage_hourly"} <= set(catalog)


def test_reader_from_settings_routes_a_postgres_url(
    ledgers: tuple[str, Path, int], tmp_path: Path
) -> None:
    url, duck, rows = ledgers
    settings = analytics_settings(tmp_path, db=url)
    for reader in (
        analytics.reader_from_settings(settings),
        analytics.reader_from_settings(analytics_settings(tmp_path), db=url),
        analytics.reader_from_settings(analytics_settings(tmp_path), url=url),
    ):
        try:
            assert isinstance(reader, PgReader)
            assert reader.query("SELECT count(*) FROM llm_usage").column(0).to_pylist() == [rows]
        finally:
            reader.close()
    with analytics.reader_from_settings(settings, db=duck) as local:
        assert isinstance(local, DuckDBReader)


def analytics_settings(tmp_path: Path, **values: object) -> Any:
    from comptroller.config import load_settings

    return load_settings(None, data_dir=tmp_path / "data", **values)


@pytest.mark.parametrize(
    ("sql", "columns"),
    [
        ("SELECT tenant, sum(cost_usd) FROM llm_usage GROUP BY ALL", {"tenant", "cost_usd"}),
        ("SELECT count(*) FROM llm_usage", set()),
        (
            "SELECT u.tags['team'] FROM llm_usage u JOIN llm_usage_daily d USING (tenant)",
            {"u", "tags", "tenant"},
        ),
        ("SELECT * FROM llm_usage", None),
        ("SELECT * EXCLUDE (fees) FROM llm_usage", None),
        ("SELECT COLUMNS('cost.*') FROM llm_usage", None),
        ("SELECT count(*) FROM llm_usage NATURAL JOIN llm_usage_daily", None),
        ("SELECT u FROM llm_usage u", None),
        ("SELECT to_json(llm_usage) FROM llm_usage", None),
        ("DESCRIBE llm_usage", None),
    ],
)
def test_only_the_columns_a_statement_names_are_fetched(sql: str, columns: set[str] | None) -> None:
    from comptroller.analytics._pg_reader import referenced_columns

    found = referenced_columns(sql)
    assert (None if found is None else set(found)) == columns


def test_a_whole_row_read_gets_every_column(ledgers: tuple[str, Path, int]) -> None:
    url, duck, _ = ledgers
    sql = "SELECT u FROM llm_usage u ORDER BY u.usage_id LIMIT 5"
    with PgReader(url) as pg, analytics.open_reader(db=duck) as local:
        _same(pg.query(sql), local.query(sql))


def test_a_select_alias_is_no_whole_row_but_a_cte_row_is() -> None:
    from comptroller.analytics._pg_reader import referenced_columns

    named = referenced_columns(
        "SELECT tenant, sum(cost_usd) AS usd FROM llm_usage GROUP BY 1 ORDER BY usd"
    )
    assert named is not None
    assert {"tenant", "cost_usd"} <= named
    assert referenced_columns("WITH a AS (SELECT tenant FROM llm_usage) SELECT a FROM a") is None


def test_the_schema_may_be_named_by_libpq_options_too(ledgers: tuple[str, Path, int]) -> None:
    url, _, rows = ledgers
    schema = url.rsplit("schema=", 1)[1]
    options = url.split("?", 1)[0] + f"?options=-csearch_path%3D{schema}"
    with PgReader(options) as pg:
        assert pg.query("SELECT count(*) FROM llm_usage").column(0).to_pylist() == [rows]
        assert "?" not in pg.where
