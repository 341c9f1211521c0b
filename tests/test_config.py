from __future__ import annotations

from pathlib import Path

import pytest

from comptroller.config import default_data_dir, load_settings
from comptroller.errors import ConfigError


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "comptroller.toml"
    config.write_text('timezone = "Europe/Paris"\n[collector]\nport = 9000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_PORT", "9100")
    settings = load_settings(config)
    assert settings.collector.port == 9100
    assert settings.collector.host == "0.0.0.0"  # from the file, same section
    assert settings.timezone == "Europe/Paris"


def test_explicit_argument_wins_over_environment(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "explicit")
    assert settings.data_dir == tmp_path / "explicit"
    assert settings.db_file == tmp_path / "explicit" / "comptroller.duckdb"


def test_model_per_purpose_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPTROLLER_MODEL_AGENT_TURN", "openai:gpt-4o-mini")
    monkeypatch.setenv("COMPTROLLER_MODEL_REASONING", "anthropic:claude-sonnet-4-5")
    settings = load_settings()
    assert settings.model == {
        "agent_turn": "openai:gpt-4o-mini",
        "reasoning": "anthropic:claude-sonnet-4-5",
    }


def test_bad_model_reference_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPTROLLER_MODEL_REASONING", "gpt-4o")
    with pytest.raises(ConfigError, match=r"COMPTROLLER_MODEL_REASONING.*provider:model"):
        load_settings()


def test_unknown_timezone_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPTROLLER_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match=r"COMPTROLLER_TIMEZONE.*unknown time zone"):
        load_settings()


@pytest.mark.parametrize(("value", "size"), [("0", 0), ("16384", 16384)])
def test_collector_row_group_size_is_0_or_whole_vectors(
    monkeypatch: pytest.MonkeyPatch, value: str, size: int
) -> None:
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_ROW_GROUP_SIZE", value)
    assert load_settings().collector.row_group_size == size
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_ROW_GROUP_SIZE", "1000")
    with pytest.raises(ConfigError, match=r"COMPTROLLER_COLLECTOR_ROW_GROUP_SIZE.*at least 2048"):
        load_settings()


def test_missing_explicit_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_project_data_dir_next_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "comptroller.toml").write_text("")
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    assert default_data_dir(nested) == tmp_path / ".comptroller"


def test_relative_data_dir_in_file_is_relative_to_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMPTROLLER_DATA_DIR")
    config = tmp_path / "conf" / "comptroller.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "state"\n')
    assert load_settings(config).data_dir == tmp_path / "conf" / "state"


def test_ensure_data_dir_reports_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = load_settings(None, data_dir=blocker / "sub")
    with pytest.raises(ConfigError, match=r"not usable.*COMPTROLLER_DATA_DIR"):
        settings.ensure_data_dir()
