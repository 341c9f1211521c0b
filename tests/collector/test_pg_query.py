"""`/api/query` on a collector whose ledger is PostgreSQL: a real `comptroller collect
--db postgresql://…` process on a free port, real HTTP, the local PostgreSQL server.

The collector answers DuckDB SQL through `analytics.PgReader`, within its own query limits
(`collector.query_max_rows` cuts and marks a long answer), and `comptroller sql --url` reads
through it what `comptroller sql --db postgresql://…` reads from the database itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.ipc
import pytest

from comptroller.analytics._reader import truncated_at

from .test_pg_collector import _Collector, _wait_landed, ledger
from .test_pg_ledger import usage_payload

pytestmark = pytest.mark.postgres

__all__ = ["ledger"]  # the fixture, used by name

_REQUESTS = 4
_ROWS = 25


def _post_usage(collector: _Collector) -> None:
    with httpx.Client(timeout=10) as client:
        for seed in range(_REQUESTS):
            answer = client.post(
                f"{collector.url}/v1/logs",
                content=usage_payload(seed, _ROWS, prefix="q"),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert answer.status_code == 200, answer.text


def _query(collector: _Collector, sql: str) -> httpx.Response:
    return httpx.post(f"{collector.url}/api/query", json={"sql": sql}, timeout=30)


def _arrow(answer: httpx.Response) -> pa.Table:
    assert answer.status_code == 200, answer.text
    return pyarrow.ipc.open_stream(answer.content).read_all()


def _sql_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "comptroller", "sql", "-f", "csv", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_api_query_on_a_postgres_ledger_answers_within_the_collectors_limits(
    ledger: tuple[str, str, str], tmp_path: Path
) -> None:
    url, schema, cli_url = ledger
    collector = _Collector(
        tmp_path / "c",
        ["--db", cli_url, "--collector-id", "query-1"],
        {"COMPTROLLER_COLLECTOR_QUERY_MAX_ROWS": "30"},
    )
    try:
        collector.start()
        _post_usage(collector)
        _wait_landed(collector)

        counted = _arrow(_query(collector, "select count(*) as n from llm_usage"))
        assert counted.column("n").to_pylist() == [_REQUESTS * _ROWS]
        # DuckDB SQL over the ledger's tables, rollups included.
        by_purpose = _arrow(
            _query(
                collector,
                "select purpose, sum(calls) as calls from llm_usage_daily group by all "
                "order by all",
            )
        )
        assert sum(by_purpose.column("calls").to_pylist()) == _REQUESTS * _ROWS
        # The collector's row cap (collector.query_max_rows = 30) cuts and marks the answer.
        rows = _arrow(_query(collector, "select usage_id from llm_usage order by usage_id"))
        assert rows.num_rows == 30
        assert truncated_at(rows) == 30
        # Only one read statement, as on a DuckDB ledger.
        refused = _query(collector, "delete from llm_usage")
        assert refused.status_code == 400, refused.text
        assert _arrow(_query(collector, "select count(*) as n from llm_usage")).column(
            "n"
        ).to_pylist() == [_REQUESTS * _ROWS]

        # `comptroller sql --url` through the collector reads what `--db` reads directly.
        sql = "select tenant, purpose, count(*) as n from llm_usage group by all order by all"
        through = _sql_cli("--url", collector.url, sql)
        direct = _sql_cli("--db", f"postgresql://{url.split('://', 1)[1]}?schema={schema}", sql)
        assert through == direct
        assert through.count("\n") > 2
        assert collector.stop() == -signal.SIGTERM, collector.stderr.read_text()
    finally:
        collector.kill()
