from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from _usage_db import NOW, fill, run_cli, usage_row


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return fill(
        tmp_path / "u.duckdb",
        [usage_row(NOW, cost="0.25", purpose="chat"), usage_row(NOW, cost=None, purpose="extract")],
    )


QUERY = "SELECT purpose, sum(cost_usd) AS cost_usd, sum(calls) AS calls FROM llm_usage_daily GROUP BY 1 ORDER BY 1"


def test_table_output_is_aligned_with_exact_decimals(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    code, out, err = run_cli(capsys, "sql", "--db", str(db), QUERY)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["purpose", "cost_usd", "calls"]
    assert lines[2].split() == ["chat", "0.25", "1"]
    assert lines[3].split() == ["extract", "0", "1"]
    assert lines[-1] == "(2 rows)"


def test_csv_output(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    code, out, _ = run_cli(capsys, "sql", "--db", str(db), "-f", "csv", QUERY)
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [
        ["purpose", "cost_usd", "calls"],
        ["chat", "0.25", "1"],
        ["extract", "0", "1"],
    ]


def test_json_output_keeps_decimals_exact(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    code, out, _ = run_cli(capsys, "sql", "--db", str(db), "--format", "json", QUERY)
    assert code == 0
    assert json.loads(out) == [
        {"purpose": "chat", "cost_usd": "0.25", "calls": 1},
        {"purpose": "extract", "cost_usd": "0", "calls": 1},
    ]


def test_parquet_output_to_a_file(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out.parquet"
    code, out, _ = run_cli(
        capsys, "sql", "--db", str(db), "-f", "parquet", "-o", str(target), QUERY
    )
    assert code == 0
    assert out == ""
    assert pq.read_table(target).column("purpose").to_pylist() == ["chat", "extract"]


def test_write_statement_is_refused_with_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    code, out, err = run_cli(capsys, "sql", "--db", str(db), "DELETE FROM llm_usage")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "read-only" in err


def test_db_and_url_together_is_bad_usage(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    code, _, err = run_cli(
        capsys, "sql", "--db", str(db), "--url", "http://127.0.0.1:1", "SELECT 1"
    )
    assert code == 2
    assert "not both" in err


def cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comptroller", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_statements_piped_on_stdin_run_in_turn(db: Path) -> None:
    result = cli("sql", "--db", str(db), "-f", "csv", stdin="SELECT 1 AS a;\nSELECT 'x;y' AS b;\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a\n1\nb\nx;y\n"


def test_sql_reads_through_a_live_collector_that_holds_the_file(live_collector: Any) -> None:
    live_collector.write([usage_row(NOW, cost="0.5")])
    # Another process cannot open the file while the collector writes it: --url reads
    # through the collector, and without it the configured collector is found.
    via_url = cli(
        "sql", "--url", live_collector.url, "-f", "csv", "SELECT count(*) AS n FROM llm_usage"
    )
    assert via_url.returncode == 0, via_url.stderr
    assert via_url.stdout == "n\n1\n"
    port = live_collector.url.rsplit(":", 1)[1]
    found = cli(
        "sql",
        "-f",
        "csv",
        "SELECT count(*) AS n FROM llm_usage",
        env={
            "COMPTROLLER_DB": str(live_collector.collector.db_path),
            "COMPTROLLER_COLLECTOR_PORT": port,
        },
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout == "n\n1\n"


def test_locked_file_without_a_collector_says_what_to_do(live_collector: Any) -> None:
    result = cli(
        "sql",
        "--db",
        str(live_collector.collector.db_path),
        "SELECT 1",
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--url" in result.stderr


def test_no_query_on_a_terminal_opens_an_interactive_prompt(db: Path) -> None:
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "comptroller", "sql", "--db", str(db)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=os.environ.copy(),
    )
    os.close(follower)
    os.write(leader, b"SELECT 40 + 2\n  AS answer;\nSELECT * FROM nope;\n.quit\n")
    seen = b""
    try:
        while proc.poll() is None or select.select([leader], [], [], 0)[0]:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.wait(timeout=60)
        os.close(leader)
    text = seen.decode()
    assert proc.returncode == 0, text
    assert "comptroller> " in text
    assert "...> " in text
    assert "42" in text.split("answer", 1)[1]
    assert "error: Catalog Error" in text
