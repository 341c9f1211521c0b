"""`/api/query` reads and never writes: DuckDB's parser decides what a statement is, and a
read-only transaction refuses every write the parser check might miss. Queries are bounded
(time, rows, body, concurrency) and never starve `/api/budget-state`.

Each test runs a real collector over real HTTP (tests/usage_db.py `LiveCollector`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.ipc
import pytest
from usage_db import NOW, LiveCollector, usage_row

from comptroller import analytics

# Statements that write, or change settings, or reach files: each must be refused.
WRITES = [
    "UPDATE llm_usage SET cost_usd = 0",
    "DELETE FROM llm_usage",
    "INSERT INTO budget_events (event_id, ts, kind) VALUES ('x', now(), 'warning')",
    "DROP VIEW spans",
    "DROP TABLE llm_usage_daily",
    "ALTER TABLE llm_usage ADD COLUMN x INTEGER",
    "CREATE TABLE stolen AS SELECT * FROM llm_usage",
    "CREATE TEMP TABLE scratch AS SELECT 1",
    "TRUNCATE llm_usage",
    "EXPLAIN ANALYZE UPDATE llm_usage SET cost_usd = 0",
    "EXPLAIN ANALYZE DROP VIEW spans",
    "EXPLAIN (ANALYZE, FORMAT json) DELETE FROM llm_usage",
    "EXPLAIN UPDATE llm_usage SET cost_usd = 0",
    "SELECT 1; UPDATE llm_usage SET cost_usd = 0",
    "UPDATE llm_usage SET cost_usd = 0; SELECT 1",
    "COPY llm_usage TO '/tmp/comptroller-stolen.csv'",
    "EXPORT DATABASE '/tmp/comptroller-export'",
    "ATTACH '/tmp/comptroller-other.duckdb' AS other",
    "ATTACH ':memory:' AS scratch",
    "DETACH live",
    "PRAGMA memory_limit = '16GB'",
    "PRAGMA enable_profiling",
    "PRAGMA table_info('llm_usage')",
    "SET memory_limit = '16GB'",
    "SET enable_external_access = true",
    "RESET threads",
    "CALL checkpoint()",
    "CHECKPOINT",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM (FROM force_checkpoint())",
    "INSTALL httpfs",
    "LOAD httpfs",
    "VACUUM",
    "BEGIN TRANSACTION",
    "COMMIT",
    "USE memory",
    "CREATE MACRO evil(x) AS x",
    "PIVOT llm_usage ON purpose USING sum(cost_usd)",
]


def _start_live(db: Path) -> LiveCollector:
    server = LiveCollector(db, query_timeout_s=1.0, query_max_rows=50, query_concurrency=2)
    server.write([usage_row(NOW, cost="1.5"), usage_row(NOW, cost="2.5", purpose="scoring")])
    return server


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveCollector]:
    server = _start_live(tmp_path / "live.duckdb")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCollector]:
    """One collector for the ~50 statements that must be refused: each test checks the ledger
    is unchanged (and what it must hold), so a write that got through still fails its own
    test, and the 50 start-ups (seconds each on a loaded machine) are saved."""
    server = _start_live(tmp_path_factory.mktemp("refusing") / "live.duckdb")
    yield server
    server.stop()


def ledger(server: LiveCollector) -> list[Any]:
    cursor = server.collector.con.cursor()
    try:
        return [
            cursor.sql("SELECT usage_id, cost_usd FROM llm_usage ORDER BY 1").fetchall(),
            cursor.sql("SELECT sum(cost_usd) FROM llm_usage_daily").fetchall(),
            cursor.sql(
                "SELECT table_name FROM duckdb_tables() UNION ALL "
                "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1"
            ).fetchall(),
            cursor.sql("SELECT current_setting('memory_limit')").fetchall(),
        ]
    finally:
        cursor.close()


def post(server: LiveCollector, body: object, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/api/query", json=body, timeout=30, **kwargs)


def arrow(response: httpx.Response) -> pa.Table:
    with pyarrow.ipc.open_stream(response.content) as stream:
        return stream.read_all()


@pytest.mark.parametrize("sql", WRITES)
def test_a_statement_that_would_write_is_refused_and_the_ledger_is_unchanged(
    refusing: LiveCollector, sql: str
) -> None:
    live = refusing
    before = ledger(live)
    response = post(live, {"sql": sql})
    assert response.status_code == 400, response.text
    problem = response.json()["error"]
    assert problem  # a reason a person can act on, in JSON
    assert ledger(live) == before
    assert Decimal(str(before[1][0][0])) == Decimal("4")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE llm_usage SET cost_usd = 0",
        "EXPLAIN ANALYZE UPDATE llm_usage SET cost_usd = 0",
        "EXPLAIN ANALYZE DROP VIEW spans",
        "DROP TABLE llm_usage_daily",
        "DELETE FROM llm_usage",
        "CREATE TABLE stolen AS SELECT 1",
        "ALTER TABLE llm_usage ADD COLUMN x INTEGER",
        "SELECT nextval('no_such_sequence')",
        "SET memory_limit = '16GB'",
        "PRAGMA enable_profiling",
        "COPY llm_usage TO '/tmp/comptroller-stolen.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT * FROM force_checkpoint()",
    ],
)
def test_the_read_only_transaction_refuses_writes_even_past_the_parser(
    refusing: LiveCollector, sql: str
) -> None:
    live = refusing
    # The parser check bypassed on purpose: DuckDB's read-only transaction (and the locked,
    # file-less configuration) is the second wall.
    before = ledger(live)
    with pytest.raises(analytics.QueryError):
        analytics.run_read_only(live.collector.con, sql, checked=False)
    assert ledger(live) == before
    assert Decimal(str(before[1][0][0])) == Decimal("4")
    assert not Path("/tmp/comptroller-stolen.csv").exists()


def test_reads_are_answered(live: LiveCollector) -> None:
    for sql in [
        "SELECT purpose, sum(cost_usd) AS cost FROM llm_usage GROUP BY ALL ORDER BY 1",
        "FROM llm_usage_daily",
        "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
        "DESCRIBE llm_usage",
        "SHOW TABLES",
        "SUMMARIZE llm_usage",
        "EXPLAIN SELECT * FROM llm_usage",
        "EXPLAIN ANALYZE SELECT count(*) FROM llm_usage",
        "SELECT * FROM pragma_table_info('llm_usage')",
    ]:
        response = post(live, {"sql": sql})
        assert response.status_code == 200, (sql, response.text)
    rows = arrow(post(live, {"sql": "SELECT $p::VARCHAR AS p", "params": {"p": "x"}}))
    assert rows.to_pylist() == [{"p": "x"}]


def test_refusals_say_what_to_do(live: LiveCollector) -> None:
    pragma = post(live, {"sql": "PRAGMA table_info('llm_usage')"}).json()["error"]
    assert "pragma_table_info" in pragma
    several = post(live, {"sql": "SELECT 1; SELECT 2"}).json()["error"]
    assert "one at a time" in several
    explained = post(live, {"sql": "EXPLAIN ANALYZE UPDATE llm_usage SET cost_usd = 0"})
    assert "EXPLAIN of UPDATE" in explained.json()["error"]


def test_a_result_over_the_row_cap_is_cut_and_says_so(live: LiveCollector) -> None:
    cut = arrow(post(live, {"sql": "SELECT * FROM range(1000000000) t(i)"}))
    assert cut.num_rows == 50
    assert analytics.truncated_at(cut) == 50
    whole = arrow(post(live, {"sql": "SELECT * FROM range(50) t(i)"}))
    assert whole.num_rows == 50
    assert analytics.truncated_at(whole) is None
    with analytics.HttpReader(live.url) as reader:
        assert analytics.truncated_at(reader.query("SELECT * FROM range(51) t(i)")) == 50


def test_a_body_over_the_limit_is_413(tmp_path: Path) -> None:
    server = LiveCollector(tmp_path / "small.duckdb", query_max_body_bytes=1000)
    try:
        big = "SELECT 1 -- " + "x" * 2000
        response = post(server, {"sql": big})
        assert response.status_code == 413
        assert "collector.query_max_body_bytes" in response.json()["error"]
        assert post(server, {"sql": "SELECT 1"}).status_code == 200
    finally:
        server.stop()


RUNAWAY = "SELECT sum(hash(i)) FROM range(3000000000) t(i)"


def test_runaway_queries_end_at_the_time_limit_and_budget_state_keeps_answering(
    live: LiveCollector,
) -> None:
    ended: list[httpx.Response] = []

    def runaway() -> None:
        ended.append(post(live, {"sql": RUNAWAY}))

    threads = [threading.Thread(target=runaway) for _ in range(8)]
    for thread in threads:
        thread.start()
    slowest = 0.0
    while any(thread.is_alive() for thread in threads):
        started = time.monotonic()
        answer = httpx.get(f"{live.url}/api/budget-state", timeout=30)
        slowest = max(slowest, time.monotonic() - started)
        assert answer.status_code == 200
    for thread in threads:
        thread.join()
    assert [r.status_code for r in ended] == [408] * 8
    assert all("time limit of 1 s" in r.json()["error"] for r in ended)
    assert slowest < 2.0
    with (
        analytics.HttpReader(live.url) as reader,
        pytest.raises(analytics.QueryTimeout, match=r"collector\.query_timeout_s"),
    ):
        reader.query(RUNAWAY)


def test_queries_beyond_the_queue_get_429_with_retry_after(tmp_path: Path) -> None:
    server = LiveCollector(
        tmp_path / "q.duckdb", query_timeout_s=1.0, query_concurrency=1, query_queue=0
    )
    try:
        answers: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda: answers.append(post(server, {"sql": RUNAWAY})))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # One ran (to its time limit); the others found no slot and no room to wait.
        assert sorted(r.status_code for r in answers) == [408, 429, 429]
        refused = [r for r in answers if r.status_code == 429]
        assert all(r.headers["Retry-After"] == "1" for r in refused)
        assert all("collector.query_concurrency" in r.json()["error"] for r in refused)
    finally:
        server.stop()


def test_local_readers_refuse_writes_too(tmp_path: Path) -> None:
    path = tmp_path / "local.duckdb"
    con = analytics.connect(path)
    try:
        reader = analytics.DuckDBReader(con)
        with pytest.raises(analytics.QueryError, match="EXPLAIN of UPDATE"):
            reader.query("EXPLAIN ANALYZE UPDATE llm_usage SET cost_usd = 0")
        with pytest.raises(analytics.QueryError, match="read-only mode"):
            analytics.run_read_only(con, "DELETE FROM llm_usage", checked=False)
    finally:
        con.close()


def test_comptroller_sql_refuses_writes_and_notes_a_cut_answer(
    live: LiveCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    from comptroller.cli import main

    before = ledger(live)
    with pytest.raises(SystemExit) as refused:
        main(["sql", "--url", live.url, "EXPLAIN ANALYZE UPDATE llm_usage SET cost_usd = 0"])
    assert refused.value.code != 0
    assert "EXPLAIN of UPDATE" in capsys.readouterr().err
    assert ledger(live) == before
    main(["sql", "--url", live.url, "-f", "csv", "SELECT * FROM range(100) t(i)"])
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 51  # the header and the cap
    assert "50 of more than 50 rows" in captured.err
