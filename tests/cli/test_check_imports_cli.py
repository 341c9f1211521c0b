"""`comptroller check-imports`: what a developer, CI and pre-commit see.

Most tests run the real entry point (`comptroller.cli.main`) in this process, so exit codes
and the one stderr line are the ones a shell sees; the command is put in the command table
for the test if the table does not list it yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with langchain-core, stubs do not
from _usage_db import run_cli
from click.testing import CliRunner

from comptroller.cli import COMMANDS
from comptroller.cli._check_imports import check_imports

REPO = Path(__file__).resolve().parents[2]
ENTRY = ("comptroller.cli._check_imports", "check_imports")


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    if "check-imports" not in COMMANDS:
        monkeypatch.setitem(COMMANDS, "check-imports", (*ENTRY, "Forbid direct LLM SDK imports."))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small application with one direct SDK import and a gateway module; cwd is its root."""
    files = {
        "pyproject.toml": "[project]\nname = 'shop'\n",
        "shop/__init__.py": "",
        "shop/views.py": "import json\nfrom openai import OpenAI\n",
        "shop/llm/__init__.py": "",
        "shop/llm/gateway.py": "import litellm\n",
        "shop/orders.py": "from comptroller.control import ControlPlane\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_findings_are_one_line_each_and_exit_1(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    code, out, err = run_cli(capsys, "check-imports", "shop")
    assert code == 1
    hint = "route the call through comptroller (ControlPlane.chat_model)"
    assert out.splitlines() == [
        f"{Path('shop/views.py')}:2:1: CI001 forbidden import of 'openai': {hint}",
        f"{Path('shop/llm/gateway.py')}:1:8: CI001 forbidden import of 'litellm': {hint}",
    ]
    assert err.splitlines() == [
        "comptroller: error: check-imports: 2 forbidden imports in 2 files (5 files checked)"
    ]


def test_the_allowlist_makes_it_clean_and_exit_0(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    code, out, err = run_cli(
        capsys, "check-imports", "--allow", "shop.llm", "--allow", "shop/views.py"
    )
    assert code == 0
    assert out == ""
    assert err.splitlines() == ["check-imports: no forbidden imports (2 files checked, 3 allowed)"]


def test_the_projects_pyproject_holds_the_allowlist(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    with (project / "pyproject.toml").open("a") as config:
        config.write('[tool.comptroller.check-imports]\nallow = ["shop.llm.gateway"]\n')
    # From below the project root too: the nearest pyproject.toml with the section counts.
    os.chdir(project / "shop")
    code, out, _err = run_cli(capsys, "check-imports", ".")
    assert code == 1
    assert out.splitlines()[0].startswith("views.py:2:1: CI001 forbidden import of 'openai'")
    assert len(out.splitlines()) == 1


def test_json_output_for_tools(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, err = run_cli(
        capsys, "check-imports", "--format", "json", "--forbid", "comptroller.control"
    )
    assert code == 1
    document = json.loads(out)
    assert document["files_checked"] == 5
    assert document["config_file"] is None
    assert "comptroller.control" in document["forbidden"]
    assert [
        (f["path"], f["line"], f["column"], f["code"], f["module"]) for f in document["findings"]
    ] == [
        (str(Path("shop/orders.py")), 1, 1, "CI001", "comptroller.control"),
        (str(Path("shop/views.py")), 2, 1, "CI001", "openai"),
        (str(Path("shop/llm/gateway.py")), 1, 8, "CI001", "litellm"),
    ]
    assert err.count("\n") == 1


def test_an_unparseable_file_fails_with_its_own_code_and_message(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    (project / "shop/broken.py").write_text("import openai\nif True\n")
    code, out, err = run_cli(capsys, "check-imports", "--allow", "shop.llm", "shop/broken.py")
    assert code == 1
    assert out.startswith(f"{Path('shop/broken.py')}:2:8: CI003 cannot parse this file: ")
    assert err.strip() == (
        "comptroller: error: check-imports: 1 file could not be checked (1 file checked)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check-imports", "nosuch"], "'nosuch' does not exist"),
        (["check-imports", "--allow", "my app", "."], "--allow: 'my app' is neither a module"),
        (["check-imports", "--forbid", "google/genai", "."], "'google/genai' is not a module"),
        (["check-imports", "--format", "xml"], "'xml' is not one of"),
        (["check-imports", "--pyproject", "nosuch.toml"], "'nosuch.toml' does not exist"),
        (["check-imports", "--nosuch"], "--nosuch"),
    ],
)
def test_bad_usage_is_one_line_on_stderr_and_exit_2(
    capsys: pytest.CaptureFixture[str], project: Path, args: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_a_bad_pyproject_section_is_exit_2_naming_file_and_key(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    with (project / "pyproject.toml").open("a") as config:
        config.write("[tool.comptroller.check-imports]\nallowed = ['shop.llm']\n")
    code, _out, err = run_cli(capsys, "check-imports")
    assert code == 2
    assert len(err.splitlines()) == 1
    assert str(project / "pyproject.toml") in err
    assert "unknown key 'allowed'" in err


def test_an_explicit_pyproject_wins(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    other = project / "ci" / "imports.toml"
    other.parent.mkdir()
    other.write_text("[tool.comptroller.check-imports]\nallow = ['../shop/views.py', 'shop.llm']\n")
    code, _out, err = run_cli(capsys, "check-imports", "--pyproject", str(other), "shop")
    assert code == 0, err


def test_the_command_object_runs_under_click_testing(project: Path) -> None:
    runner = CliRunner()
    clean = runner.invoke(check_imports, ["--allow", "shop.llm", "--allow", "shop/views.py"])
    assert clean.exit_code == 0, clean.output
    assert "no forbidden imports" in clean.stderr
    found = runner.invoke(check_imports, ["shop/views.py"])
    assert found.exit_code == 1
    assert "shop/views.py:2:1: CI001" in found.stdout.replace(os.sep, "/")


def test_help_explains_codes_allowlist_and_exit_codes() -> None:
    result = CliRunner().invoke(check_imports, ["--help"])
    assert result.exit_code == 0
    for words in ("CI001", "CI003", "TYPE_CHECKING", "extend-forbid", "--allow", "0 clean"):
        assert words in result.output


@pytest.mark.skipif(
    "check-imports" not in COMMANDS, reason="check-imports is not in the command table yet"
)
def test_the_installed_command_in_a_fresh_process(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import anthropic\n")
    done = subprocess.run(
        [sys.executable, "-m", "comptroller", "check-imports", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"{tmp_path / 'app.py'}:1:8: CI001")


def test_the_pre_commit_hook_definition() -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "comptroller-check-imports"]
    assert hook["entry"] == "comptroller check-imports"
    assert hook["language"] == "python"
    assert hook["types"] == ["python"]
    # pre-commit appends the staged files: the command takes files as well as folders.
    assert textwrap.dedent(hook["description"]).strip()
