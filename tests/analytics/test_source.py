from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comptroller.analytics import DuckDBReader, HttpReader
from comptroller.analytics._source import reader_from_settings
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
