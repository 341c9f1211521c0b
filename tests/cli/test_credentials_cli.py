from __future__ import annotations

import io
import json
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from comptroller.cli import main
from comptroller.control._os_identity import os_identity


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def run(*args: str, stdin: str = "") -> Run:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    # Roles are granted, not claimed: the OS user owning the data directory binds itself.
    assert run("admin", "init").code == 0
    run("admin", "grant", os_identity(), "--role", "org_admin", "--org", "acme")
    return run


def test_set_from_stdin_then_list_shows_the_provider_not_the_key(cli, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "credentials", "set", "--provider", "openai", "--org", "acme", stdin="sk-from-stdin\n"
    )
    assert result.code == 0, result.err
    assert result.out.startswith("stored api_key for openai at org:acme (ref cred_")
    listed = cli("credentials", "list", "--json")
    (entry,) = json.loads(listed.out)
    assert (entry["scope"], entry["provider"], entry["kind"]) == ("org:acme", "openai", "api_key")
    assert "sk-from-stdin" not in listed.out + result.out + result.err
    assert stat.S_IMODE((data_dir / "master.key").stat().st_mode) == 0o600
    human = cli("credentials", "list", "--org", "acme")
    assert human.out.startswith("org:acme\topenai\tdefault\tapi_key\tcred_")


def test_set_from_an_environment_variable(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ACME_ANTHROPIC_KEY", "sk-ant-env")
    result = cli(
        "credentials",
        "set",
        "--provider",
        "anthropic",
        "--global",
        "--from-env",
        "ACME_ANTHROPIC_KEY",
        "--json",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["provider"] == "anthropic"
    # The stored key is what a profile can now rely on.
    ok = cli("profiles", "set", "reasoning", "--global", "--model", "anthropic:claude-sonnet-4-5")
    assert ok.code == 0, ok.err


def test_secret_is_never_accepted_on_the_command_line(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("credentials", "set", "--provider", "openai", "--global", "--secret", "sk-argv")
    assert result.code == 2
    assert "No such option '--secret'" in result.err
    assert "sk-argv" not in result.err
    positional = cli("credentials", "set", "--provider", "openai", "--global", "sk-live-argv")
    assert positional.code == 2
    assert "takes no arguments (1 given, not shown)" in positional.err
    assert "sk-live-argv" not in positional.err


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ["credentials", "set", "--provider", "openai", "--global"],
            "\n",
            "the secret for provider 'openai' at global is empty",
        ),
        (
            ["credentials", "set", "--provider", "openai", "--global", "--from-env", "NOPE_UNSET"],
            "",
            "environment variable NOPE_UNSET is not set",
        ),
        (["credentials", "set", "--provider", "openai"], "sk-x", "name the scope"),
        (
            ["credentials", "delete", "--provider", "openai", "--org", "acme"],
            "",
            "no credential 'default' for provider 'openai' at org:acme",
        ),
        (
            [
                "credentials",
                "set",
                "--provider",
                "openai",
                "--org",
                "globex",
                "--role",
                "org_admin",
                "--actor-org",
                "acme",
            ],
            "sk-x",
            "may not change org:globex",
        ),
        (
            ["credentials", "rotate-master-key", "--role", "org_admin", "--actor-org", "acme"],
            "",
            "needs the platform role",
        ),
    ],
)
def test_refusals_are_one_line_with_exit_2(cli, args: list[str], stdin: str, message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli(*args, stdin=stdin)
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert message in lines[0]


def test_delete_then_list_is_empty(cli) -> None:  # type: ignore[no-untyped-def]
    cli("credentials", "set", "--provider", "openai", "--org", "acme", stdin="sk-1")
    result = cli("credentials", "delete", "--provider", "openai", "--org", "acme")
    assert result.code == 0, result.err
    assert result.out.strip() == "deleted openai (default) at org:acme"
    assert cli("credentials", "list").out.strip() == "no credentials configured"


def test_rotate_master_key_reencrypts_and_keys_stay_usable(cli, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    cli("credentials", "set", "--provider", "openai", "--global", stdin="sk-1")
    cli("credentials", "set", "--provider", "openai", "--org", "acme", stdin="sk-2")
    old = (data_dir / "master.key").read_text()
    before = {e["key_id"] for e in json.loads(cli("credentials", "list", "--json").out)}
    result = cli("credentials", "rotate-master-key", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["reencrypted"] == 2
    assert set(data["key_ids"]).isdisjoint(before)
    assert (data_dir / "master.key").read_text() != old
    # Still usable: validation finds them and a profile can be set on them.
    ok = cli(
        "profiles",
        "set",
        "reasoning",
        "--org",
        "acme",
        "--model",
        "openai:gpt-4o",
        "--credential-source",
        "byo",
    )
    assert ok.code == 0, ok.err


def test_rotate_with_an_environment_master_key_takes_the_new_one_from_a_variable(
    cli,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from comptroller.control.profiles import generate_master_key

    monkeypatch.setenv("COMPTROLLER_MASTER_KEY", generate_master_key())
    cli("credentials", "set", "--provider", "openai", "--global", stdin="sk-1")
    refused = cli("credentials", "rotate-master-key")
    assert refused.code == 2
    assert "--new-key-env" in refused.err
    monkeypatch.setenv("NEXT_KEY", generate_master_key())
    result = cli("credentials", "rotate-master-key", "--new-key-env", "NEXT_KEY")
    assert result.code == 0, result.err
    assert result.out.startswith("re-encrypted 1 credential(s)")
    assert "now set COMPTROLLER_MASTER_KEY to the value of NEXT_KEY" in result.err
