from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from usage_db import held_by_another_process, insert_usage, usage_row

from comptroller.analytics import (
    DuckDBReader,
    HttpReader,
    QueryError,
    ReaderUnavailable,
    budget_state,
    check_read_only,
    connect,
    open_reader,
    run_panel,
)
from comptroller.dashboards import load_panels
from comptroller.errors import UsageError

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def test_open_reader_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exactly one"):
        open_reader()
    with pytest.raises(UsageError, match="exactly one"):
        open_reader(db=tmp_path / "x.duckdb", url="http://127.0.0.1:1")


def test_missing_file_is_unavailable_and_names_it(tmp_path: Path) -> None:
    with pytest.raises(ReaderUnavailable, match=r"nope\.duckdb"):
        open_reader(db=tmp_path / "nope.duckdb")


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO llm_usage_daily SELECT * FROM llm_usage_daily",
        "SELECT 1; SELECT 2",
        "DROP TABLE spans",
    ],
)
def test_only_single_read_only_statements_are_accepted(sql: str) -> None:
    with pytest.raises(QueryError):
        check_read_only(sql)


@pytest.mark.parametrize(
    "sql", ["SELECT 1", "DESCRIBE llm_usage", "SHOW TABLES", "EXPLAIN SELECT 1"]
)
def test_read_only_statements_pass(sql: str) -> None:
    check_read_only(sql)


def test_file_reader_answers_arrow_and_refuses_writes(tmp_path: Path) -> None:
    con = connect(tmp_path / "u.duckdb")
    insert_usage(con, [usage_row(NOW, cost="0.5")])
    con.close()
    with open_reader(db=tmp_path / "u.duckdb") as reader:
        assert isinstance(reader, DuckDBReader)
        table = reader.query("SELECT count(*) AS n FROM llm_usage WHERE tenant = $t", {"t": "acme"})
        assert table.to_pylist() == [{"n": 1}]
        with pytest.raises(QueryError, match="read-only"):
            reader.query("DELETE FROM llm_usage")
        with pytest.raises(QueryError, match="no_such"):
            reader.query("SELECT * FROM no_such")


def test_file_locked_by_a_writer_process_points_to_the_collector(tmp_path: Path) -> None:
    db = tmp_path / "busy.duckdb"
    connect(db).close()
    with held_by_another_process(db), pytest.raises(ReaderUnavailable, match="--url"):
        open_reader(db=db)


def test_remote_reader_reads_a_live_collector_while_it_writes(live_collector: Any) -> None:
    live_collector.write([usage_row(NOW, cap="1", cost="0.9")])
    with open_reader(url=live_collector.url) as reader:
        assert isinstance(reader, HttpReader)
        table = reader.query(
            "SELECT tenant, cost_usd, ts FROM llm_usage WHERE ts >= $since::TIMESTAMPTZ",
            {"since": NOW - dt.timedelta(hours=1)},
        )
        assert table.num_rows == 1
        assert pa.types.is_decimal(table.schema.field("cost_usd").type)
        live_collector.write([usage_row(NOW, cap="1", cost="0.2")])
        [state] = budget_state(reader, now=NOW)
        assert state.status == "exceeded"
        assert float(state.spent_usd) == pytest.approx(1.1)
        for panel in load_panels():
            required = {p.name: "x" for p in panel.params if p.required}
            run_panel(reader, panel, now=NOW, **required)


def test_remote_reader_carries_the_collectors_refusal(live_collector: Any) -> None:
    with open_reader(url=live_collector.url) as reader, pytest.raises(QueryError, match="HTTP 400"):
        reader.query("DELETE FROM llm_usage")


def test_unreachable_collector_is_reported_with_what_to_do() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        open_reader(url=f"http://127.0.0.1:{port}", timeout=2) as reader,
        pytest.raises(ReaderUnavailable, match="comptroller collect"),
    ):
        reader.query("SELECT 1")
