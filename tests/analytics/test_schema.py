from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from usage_db import held_by_another_process

from comptroller.analytics import SCHEMA_VERSION, connect, schema_version
from comptroller.cli import main
from comptroller.errors import ConfigError


def test_new_file_is_created_at_the_current_version(tmp_path: Path) -> None:
    con = connect(tmp_path / "new.duckdb")
    assert schema_version(con) == SCHEMA_VERSION
    con.close()


def future_file(tmp_path: Path) -> Path:
    path = tmp_path / "future.duckdb"
    connect(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO comptroller_schema (version, description) VALUES (99, 'future')")
    con.close()
    return path


@pytest.mark.parametrize("read_only", [False, True])
def test_file_from_a_newer_version_is_refused_naming_both_versions(
    tmp_path: Path, read_only: bool
) -> None:
    path = future_file(tmp_path)
    with pytest.raises(
        ConfigError, match=rf"schema version 99 is newer than this comptroller's {SCHEMA_VERSION}"
    ):
        connect(path, read_only=read_only)


def test_db_migrate_and_info_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.duckdb"

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    assert run("db", "migrate", "--db", str(path)) == (
        0,
        f"{path}: created at schema version {SCHEMA_VERSION}\n",
        "",
    )
    code, out, _ = run("db", "migrate", "--db", str(path))
    assert (code, out.strip().endswith("current")) == (0, True)
    code, out, _ = run("db", "info", "--db", str(path), "--json")
    assert code == 0
    assert f'"schema_version": {SCHEMA_VERSION}' in out
    code, _, err = run("db", "info", "--db", str(future_file(tmp_path)))
    assert code == 2
    assert "99" in err


def test_a_v1_file_migrates_to_tables_without_primary_keys_keeping_rows_and_columns(
    tmp_path: Path,
) -> None:
    from comptroller.analytics._schema import _META, _V1

    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    con.execute(_META)
    con.execute(_V1)
    con.execute("INSERT INTO comptroller_schema (version, description) VALUES (1, 'v1')")
    con.execute(
        "INSERT INTO llm_usage (usage_id, ts, price_source, outcome, source, cost_usd) "
        "VALUES ('u-1', TIMESTAMPTZ '2026-11-21 10:00:00+00', 'fallback', 'ok', 'comptroller', 0.5)"
    )
    con.execute(
        "INSERT INTO spans (trace_id, span_id, name, start_ts) "
        "VALUES ('t', 's', 'chat', TIMESTAMPTZ '2026-11-21 10:00:00+00')"
    )
    columns_v1 = {
        table: con.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        for table in ("llm_usage", "spans")
    }
    con.close()

    con = connect(path)  # migrates
    assert schema_version(con) == SCHEMA_VERSION

    def columns(table: str, nullable: bool = True) -> list[tuple[str, ...]]:
        rows = con.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return [tuple(row if nullable else row[:2]) for row in rows]

    # v5 adds the repricing provenance, NULL on every row landed before.
    assert columns("llm_usage") == [
        *columns_v1["llm_usage"],
        ("repriced_at", "TIMESTAMP WITH TIME ZONE", "YES"),
        ("repriced_from_usd", "DECIMAL(20,10)", "YES"),
        ("repriced_from_source", "VARCHAR", "YES"),
        ("price_version", "VARCHAR", "YES"),
        # v9: fees and attribution, NULL on every row landed before.
        ("fee_cost_usd", "DECIMAL(20,10)", "YES"),
        ("fees", "JSON", "YES"),
        ("user_id", "VARCHAR", "YES"),
        ("session_id", "VARCHAR", "YES"),
        ("feature", "VARCHAR", "YES"),
        ("tags", "MAP(VARCHAR, VARCHAR)", "YES"),
    ]
    # spans is a view now (v3), with the same columns; span_rows stores them, and the id of
    # each span's resource.
    assert columns("spans", nullable=False) == [row[:2] for row in columns_v1["spans"]]
    assert columns("span_rows") == [*columns_v1["spans"], ("resource_id", "UBIGINT", "YES")]
    for table in ("llm_usage", "span_rows"):
        constraints = con.execute(
            "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = ?", [table]
        ).fetchall()
        assert ("PRIMARY KEY",) not in constraints
        assert ("NOT NULL",) in constraints
    assert con.execute("SELECT usage_id, cost_usd::VARCHAR FROM llm_usage").fetchall() == [
        ("u-1", "0.5000000000")
    ]
    assert con.execute("SELECT trace_id, span_id FROM spans").fetchall() == [("t", "s")]
    con.close()


@pytest.mark.parametrize(("name", "catalog"), [("usage", "usage"), ('o\'hara "x"', 'o\'hara "x"')])
def test_a_row_group_size_applies_to_what_the_connection_writes(
    tmp_path: Path, name: str, catalog: str
) -> None:
    path = tmp_path / f"{name}.duckdb"
    con = connect(path, row_group_size=2048)
    # Attached under the name a plain connect gives the file, and every cursor starts there.
    assert con.execute("SELECT current_database()").fetchall() == [(catalog,)]
    assert con.cursor().cursor().execute("SELECT current_database()").fetchall() == [(catalog,)]
    con.execute(
        "INSERT INTO llm_usage (usage_id, ts, price_source, outcome, source) "
        "SELECT 'u-' || i, TIMESTAMPTZ '2026-11-21 10:00:00+00', 'unpriced', 'ok', 'comptroller' "
        "FROM range(5000) r(i)"
    )
    con.execute("CHECKPOINT")
    sizes = con.execute(
        "SELECT max(count) FROM pragma_storage_info('llm_usage') GROUP BY row_group_id "
        "ORDER BY row_group_id"
    ).fetchall()
    con.close()
    assert [n for (n,) in sizes] == [2048, 2048, 904]
    reader = connect(path, read_only=True)
    assert reader.execute("SELECT count(*) FROM llm_usage").fetchall() == [(5000,)]
    reader.close()


def test_a_row_group_size_below_duckdbs_vector_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2048"):
        connect(tmp_path / "x.duckdb", row_group_size=1000)


def test_a_file_locked_by_another_process_is_refused_with_a_row_group_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "busy.duckdb"
    connect(path).close()
    with held_by_another_process(path), pytest.raises(ConfigError, match="cannot open database"):
        connect(path, row_group_size=8192)


def test_a_file_named_like_a_duckdb_catalog_is_attached_under_another_name(
    tmp_path: Path,
) -> None:
    con = connect(tmp_path / "memory.duckdb", row_group_size=4096)
    assert con.execute("SELECT current_database()").fetchall() == [("comptroller",)]
    assert con.execute("SELECT count(*) FROM llm_usage").fetchall() == [(0,)]
    con.close()
