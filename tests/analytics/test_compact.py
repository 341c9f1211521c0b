from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
from usage_db import held_by_another_process

from comptroller.analytics import compact, connect, meta_value
from comptroller.cli import main
from comptroller.errors import ConfigError


def _collector_like(path: Path) -> None:
    """Usage rows landed as the collector lands them: small row groups, several landings."""
    con = connect(path, row_group_size=2048)
    for landing in range(4):
        con.execute(
            "INSERT INTO llm_usage (usage_id, ts, tenant, input_tokens, price_source, outcome, "
            "source) SELECT 'u-' || (i + $start), TIMESTAMPTZ '2026-11-21 10:00:00+00' "
            "+ to_microseconds(i + $start), 'tenant-' || (i % 7), i, 'unpriced', 'ok', "
            "'comptroller' FROM range(3000) r(i)",
            {"start": landing * 3000},
        )
    con.execute(
        "INSERT INTO span_rows (trace_id, span_id, name, start_ts, resource) "
        "VALUES ('t', 's', 'chat', TIMESTAMPTZ '2026-11-21 10:00:00+00', '{\"a\":1}')"
    )
    con.close()


def _row_groups(con: duckdb.DuckDBPyConnection) -> list[int]:
    rows = con.execute(
        "SELECT max(count) FROM pragma_storage_info('llm_usage') GROUP BY row_group_id "
        "ORDER BY row_group_id"
    ).fetchall()
    return [int(n) for (n,) in rows]


def test_compaction_keeps_every_row_in_duckdbs_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "usage.duckdb"
    _collector_like(path)
    con = connect(path, read_only=True)
    assert max(_row_groups(con)) == 2048
    rows_before = con.sql("SELECT * FROM llm_usage ORDER BY usage_id").to_arrow_table()
    spans_before = con.sql("SELECT * FROM spans").to_arrow_table()
    database_id = meta_value(con, "database_id")
    con.close()

    done = compact(path)

    assert done.path == path
    assert 0 < done.bytes_after <= done.bytes_before
    con = connect(path, read_only=True)
    assert _row_groups(con) == [12_000]
    assert con.sql("SELECT * FROM llm_usage ORDER BY usage_id").to_arrow_table() == rows_before
    assert con.sql("SELECT * FROM spans").to_arrow_table() == spans_before  # the view, too
    assert meta_value(con, "database_id") == database_id  # the ingest log stays bound
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usage.duckdb"]


def test_a_database_in_use_is_left_alone_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "busy.duckdb"
    connect(path).close()
    before = path.read_bytes()
    with held_by_another_process(path), pytest.raises(ConfigError, match="cannot open"):
        compact(path)
    assert path.read_bytes() == before
    with pytest.raises(ConfigError, match="no such database"):
        compact(tmp_path / "missing.duckdb")


def test_db_compact_command_reports_the_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.duckdb"
    _collector_like(path)
    main(["db", "compact", "--db", str(path)])
    found = re.fullmatch(
        rf"{re.escape(str(path))}: ([\d.,]+) MB -> ([\d.,]+) MB\n", capsys.readouterr().out
    )
    assert found is not None
    assert float(found[2]) == round(path.stat().st_size / 1e6, 1)
