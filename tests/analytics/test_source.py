from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from usage_db import NOW, fill, held_by_another_process, usage_row

from comptroller.analytics import DuckDBReader, HttpReader, ReaderUnavailable
from comptroller.analytics._source import LocalReader, reader_from_settings
from comptroller.config import load_settings
from comptroller.errors import ConfigError, UsageError


def test_fresh_data_dir_gets_an_empty_migrated_database(data_dir: Path) -> None:
    reader = reader_from_settings(load_settings())
    try:
        assert isinstance(reader, DuckDBReader)
        assert reader.query("SELECT count(*) AS n FROM llm_usage").to_pylist() == [{"n": 0}]
    finally:
        reader.close()
    assert (data_dir / "comptroller.duckdb").exists()


def test_configured_read_url_reads_through_the_collector(
    monkeypatch: pytest.MonkeyPatch, live_collector: Any
) -> None:
    monkeypatch.setenv("COMPTROLLER_ANALYTICS_READ_URL", live_collector.url)
    with reader_from_settings(load_settings()) as reader:
        assert isinstance(reader, HttpReader)
        assert reader.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_db_and_url_together_is_usage_error() -> None:
    with pytest.raises(UsageError):
        reader_from_settings(load_settings(), db=Path("x.duckdb"), url="http://127.0.0.1:1")


def test_unusable_data_dir_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not usable"):
        reader_from_settings(load_settings(data_dir=blocker / "data"))


def _stamp_rows(path: Path, tenant: str, *, count: int = 1) -> Path:
    """A fresh database at `path` holding `count` rows of `tenant`."""
    path.unlink(missing_ok=True)
    return fill(path, [usage_row(NOW, tenant=tenant) for _ in range(count)])


def _tenants(reader: LocalReader) -> list[str]:
    table = reader.query("SELECT DISTINCT tenant FROM llm_usage ORDER BY tenant")
    return [str(value) for value in table.column("tenant").to_pylist()]


def test_local_reader_reopens_a_file_replaced_under_it(tmp_path: Path) -> None:
    path = _stamp_rows(tmp_path / "usage.duckdb", "old")
    with LocalReader(path) as reader:
        assert _tenants(reader) == ["old"]
        # As `db compact` or a copy renamed over it does: a new file at the same path.
        fresh = _stamp_rows(tmp_path / "fresh.duckdb", "new")
        os.replace(fresh, path)
        assert _tenants(reader) == ["new"]
        assert reader.opened == 2
        assert _tenants(reader) == ["new"]
        assert reader.opened == 2  # unchanged file: not reopened


def test_local_reader_reopens_a_file_rewritten_in_place(tmp_path: Path) -> None:
    path = _stamp_rows(tmp_path / "usage.duckdb", "old")
    with LocalReader(path) as reader:
        assert _tenants(reader) == ["old"]
        inode = path.stat().st_ino
        shutil.copyfile(_stamp_rows(tmp_path / "other.duckdb", "new", count=40), path)
        assert path.stat().st_ino == inode
        assert _tenants(reader) == ["new"]


def test_local_reader_says_a_missing_file_is_missing_then_reads_it_when_it_is_back(
    tmp_path: Path,
) -> None:
    path = _stamp_rows(tmp_path / "usage.duckdb", "old")
    with LocalReader(path) as reader:
        assert _tenants(reader) == ["old"]
        saved = path.rename(tmp_path / "aside.duckdb")
        with pytest.raises(ReaderUnavailable, match="no such database"):
            reader.query("SELECT 1")
        saved.rename(path)
        assert _tenants(reader) == ["old"]


def test_locked_file_is_read_through_the_collector_found_by_itself(
    tmp_path: Path, live_collector: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The collector's port is the configured one: nobody passes --url.
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_PORT", live_collector.url.rsplit(":", 1)[1])
    live_collector.write([usage_row(NOW, tenant="via-collector")])
    path = _stamp_rows(tmp_path / "held.duckdb", "on-file")
    with reader_from_settings(load_settings(), db=path, follow=True) as reader:
        assert isinstance(reader, LocalReader)
        with held_by_another_process(path):
            assert _tenants(reader) == ["via-collector"]
            assert reader.where.startswith(f"collector {live_collector.url}")
        # The writer is gone, and so is the collector: back to the file.
        live_collector.stop()
        with pytest.raises(ReaderUnavailable, match="unreachable"):
            reader.query("SELECT 1")
        assert _tenants(reader) == ["on-file"]
        assert reader.where == str(path)


def test_locked_file_without_a_collector_says_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_PORT", "1")
    path = _stamp_rows(tmp_path / "held.duckdb", "on-file")
    with (
        reader_from_settings(load_settings(), db=path, follow=True) as reader,
        held_by_another_process(path),
        pytest.raises(ReaderUnavailable) as raised,
    ):
        reader.query("SELECT 1")
    message = str(raised.value)
    assert "lock" in message.lower()
    assert "no collector answers at http://127.0.0.1:1" in message
    assert "\n" not in message
