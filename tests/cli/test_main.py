from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comptroller import __version__
from comptroller.cli import COMMANDS, main


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comptroller", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_version_prints_package_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_help_lists_every_reserved_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0
    for name in ("collect", "tui", "sql", "budget", "report", "profiles", "credentials", "demo"):
        assert name in COMMANDS
        assert f"  {name} " in result.stdout


def test_unknown_subcommand_is_one_line_error_exit_2() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "frobnicate" in lines[0]
    assert result.stdout == ""


def test_bad_config_file_is_one_line_error_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "comptroller.toml"
    config.write_text("[collector]\nport = 'not a port'\n")
    result = run("--config", str(config), "config", "show")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert "collector.port" in lines[0]


def test_invalid_toml_is_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "comptroller.toml"
    config.write_text("timezone = \n")
    result = run("--config", str(config), "config", "show")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid TOML" in result.stderr


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "comptroller.toml"
    config.write_text("[collector]\nprot = 4318\n")
    result = run("--config", str(config), "config", "show")
    assert result.returncode == 2
    assert "collector.prot" in result.stderr
    assert "unknown setting" in result.stderr


def test_unreachable_data_dir_is_one_line_error_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("--data-dir", str(blocker / "data"), "sql", "select 1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(blocker / "data") in lines[0]


def test_main_in_process_returns_exit_code_of_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["config", "show", "--no-such-flag"])
    assert exc.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


_NOT_FOR_READING = ("langchain_core", "textual", "uvicorn", "starlette", "polars", "grpc")


@pytest.mark.parametrize("args", [["sql", "select 1"], ["budget", "check"]])
def test_reading_commands_load_only_what_they_need(args: list[str], data_dir: Path) -> None:
    # Start-up is mostly imports: `sql` and `budget check` must not pay for the control
    # plane, the collector's server or the dashboard (docs/PERFORMANCE.md, session 6).
    from usage_db import NOW, fill, usage_row

    fill(data_dir / "comptroller.duckdb", [usage_row(NOW, cost="0.25", purpose="chat")])
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('LOADED=' + ','.join(sorted({m.split('.')[0] for m in "
        "sys.modules} | {m for m in sys.modules if m.startswith('comptroller.')})), "
        "file=sys.stderr))\n"
        "from comptroller.cli import main\n"
        f"main({args!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    loaded = set(result.stderr.strip().splitlines()[-1].removeprefix("LOADED=").split(","))
    assert not loaded & set(_NOT_FOR_READING), result.stderr
    assert not {m for m in loaded if m.startswith(("comptroller.control", "comptroller.tui"))}
    assert "comptroller.collector._run" not in loaded
