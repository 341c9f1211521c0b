"""Secrets never leak: `config show` masks them, and the collector's token can live in a
private file or the environment instead of the command line, where `ps` shows it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from usage_db import LiveCollector

from comptroller.cli import main
from comptroller.config import load_settings
from comptroller.errors import ConfigError


def test_config_show_masks_url_passwords_and_secret_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "COMPTROLLER_CONTROL_PROFILE_STORE_URL", "postgresql+psycopg://app:pg-s3cret@db:5432/ct"
    )
    monkeypatch.setenv("COMPTROLLER_CONTROL_STATE_BACKEND", "redis://:redis-s3cret@cache:6379/7")
    monkeypatch.setenv(
        "COMPTROLLER_CONTROL_BUDGET_STATE_URL", "http://c:4318/api/budget-state?token=url-s3cret"
    )
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_TOKEN", "bearer-s3cret")
    main(["config", "show"])
    text = capsys.readouterr().out
    main(["config", "show", "--json"])
    data = json.loads(capsys.readouterr().out)
    for shown in (text, json.dumps(data)):
        for secret in ("pg-s3cret", "redis-s3cret", "url-s3cret", "bearer-s3cret"):
            assert secret not in shown
    assert data["control"]["profile_store_url"] == "postgresql+psycopg://app:***@db:5432/ct"
    assert data["control"]["state_backend"] == "redis://:***@cache:6379/7"
    assert data["collector"]["token"] == "***"
    assert "redis://:***@cache:6379/7" in text  # still says where, only not the secret


def private_token(tmp_path: Path, token: str = "file-token-123", mode: int = 0o600) -> Path:
    path = tmp_path / "collector.token"
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


def test_the_token_comes_from_a_private_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = private_token(tmp_path)
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_TOKEN_FILE", str(path))
    assert load_settings().collector.bearer_token() == "file-token-123"
    live = LiveCollector(tmp_path / "t.duckdb", token="file-token-123")
    try:
        # `comptroller sql` reads through the collector with the file's token
        main(["sql", "--url", live.url, "-f", "csv", "SELECT 42 AS answer"])
        assert capsys.readouterr().out.split() == ["answer", "42"]
        monkeypatch.delenv("COMPTROLLER_COLLECTOR_TOKEN_FILE")
        with pytest.raises(SystemExit):
            main(["sql", "--url", live.url, "SELECT 42"])
        assert "401" in capsys.readouterr().err
    finally:
        live.stop()


def test_a_token_file_others_may_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = private_token(tmp_path, mode=0o640)
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_TOKEN_FILE", str(path))
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings().collector.bearer_token()
    monkeypatch.delenv("COMPTROLLER_COLLECTOR_TOKEN_FILE")
    with pytest.raises(SystemExit) as refused:
        main(["collect", "--token-file", str(path), "--port", "0", "--no-grpc"])
    assert refused.value.code == 2
    assert "group or others may read it" in capsys.readouterr().err
    assert os.stat(path).st_mode & 0o777 == 0o640  # the operator's to fix, not ours


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    settings = load_settings(collector={"token_file": private_token(tmp_path, token="")})
    with pytest.raises(ConfigError, match="empty"):
        settings.collector.bearer_token()


def test_a_token_on_the_command_line_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):  # the database cannot be made: it stops before serving
        main(["collect", "--token", "cli-token", "--db", "/proc/no/x.duckdb", "--no-grpc"])
    err = capsys.readouterr().err
    assert "visible to other users" in err
    assert "cli-token" not in err
