"""analytics/_tables.py is the one owner of the landed tables: the migrated database, the
collector's Arrow batches and the landing's casts all agree with its declarations."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from comptroller.analytics import connect
from comptroller.analytics._tables import (
    LANDED,
    LLM_USAGE,
    REJECTED_RECORDS,
    SPANS,
    Table,
    arrow_schema,
    create_sql,
    select_expr,
)
from comptroller.collector._normalise import TABLE_SCHEMAS

_STORED_IN = {"spans": "span_rows"}
_SPELLED = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}
"""DuckDB's catalog spelling of a type -> the declarations' spelling."""
_STORAGE_ONLY = {"span_rows": {"resource_id"}}
"""Columns of the stored table that the batches never carry (the resource's id)."""


def _stored(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str, bool]]:
    rows = con.execute(
        "select column_name, data_type, is_nullable = 'YES' from information_schema.columns "
        "where table_name = ? order by ordinal_position",
        [table],
    ).fetchall()
    return [(n, _SPELLED.get(t, t).replace(" ", ""), bool(null)) for n, t, null in rows]


def _declared(table: Table) -> list[tuple[str, str, bool]]:
    return [
        (c.name, c.sql_type.replace(" ", ""), "NOT NULL" not in c.sql and "PRIMARY" not in c.sql)
        for c in table.columns
    ]


@pytest.mark.parametrize("name", sorted(LANDED))
def test_the_migrated_database_holds_the_declared_columns(tmp_path: Path, name: str) -> None:
    con = connect(tmp_path / "t.duckdb")
    try:
        stored = _STORED_IN.get(name, name)
        got = [c for c in _stored(con, stored) if c[0] not in _STORAGE_ONLY.get(stored, set())]
        assert got == _declared(LANDED[name])
    finally:
        con.close()


@pytest.mark.parametrize("name", sorted(set(TABLE_SCHEMAS) - {"derive"}))
def test_the_collectors_batches_use_the_declared_arrow_types(name: str) -> None:
    assert TABLE_SCHEMAS[name].equals(arrow_schema(LANDED[name]))


def test_casts_derive_from_the_declarations() -> None:
    assert select_expr(LLM_USAGE.column("cost_usd")) == "CAST(cost_usd AS DECIMAL(20, 10))"
    assert select_expr(SPANS.column("attributes")) == "CAST(attributes AS JSON)"
    assert select_expr(SPANS.column("start_ts")) == "start_ts"
    assert select_expr(SPANS.column("finish_reasons")) == "finish_reasons"


def test_checks_cover_money_tokens_time_and_json_objects() -> None:
    checks = {c.name: c.check for c in LLM_USAGE.checked}
    assert checks == {
        "ts": "time",
        "input_tokens": "tokens",
        "output_tokens": "tokens",
        "cache_read_tokens": "tokens",
        "cache_write_tokens": "tokens",
        "reasoning_tokens": "tokens",
        "cost_usd": "money",
        "budget_cap_usd": "money",
        "fee_cost_usd": "money",
        "fees": "object",
        "tags": "object",
    }


def test_create_sql_makes_a_table_that_takes_the_declared_arrow_batch() -> None:
    con = duckdb.connect()
    try:
        con.execute(create_sql(REJECTED_RECORDS))
        batch = pa.Table.from_pylist([], schema=arrow_schema(REJECTED_RECORDS))
        con.register("b", batch)
        select = ", ".join(select_expr(c) for c in REJECTED_RECORDS.columns)
        con.execute(f"insert into rejected_records select {select} from b")
        assert con.execute("select count(*) from rejected_records").fetchall() == [(0,)]
    finally:
        con.close()
