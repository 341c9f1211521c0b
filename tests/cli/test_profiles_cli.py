from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pytest

from comptroller.cli import main
from comptroller.control._os_identity import os_identity


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


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

    # Telemetry off by default here; one test below checks the events land in DuckDB.
    monkeypatch.setenv("COMPTROLLER_TELEMETRY", "none")
    # The OS user running the tests owns the data directory: it binds itself as the first
    # platform admin, and takes an org_admin grant for the role tests below.
    assert run("admin", "init").code == 0
    run("admin", "grant", os_identity(), "--role", "org_admin", "--org", "acme")
    run("credentials", "set", "--provider", "openai", "--global", stdin="sk-cli-global\n")
    return run


def test_set_show_resolve_history_diff_rollback_round_trip(cli) -> None:  # type: ignore[no-untyped-def]
    first = cli(
        "profiles",
        "set",
        "reasoning",
        "--global",
        "--model",
        "openai:gpt-4o",
        "--temperature",
        "0.2",
        "--json",
    )
    assert first.code == 0, first.err
    assert first.json()["version"] == 1
    assert first.json()["spec"] == {"model": "openai:gpt-4o", "temperature": 0.2}
    org = cli(
        "profiles",
        "set",
        "reasoning",
        "--org",
        "acme",
        "--model",
        "openai:gpt-4.1",
        "--daily-budget",
        "12.5",
        "--requests",
        "60",
        "--reason",
        "acme wants 4.1",
    )
    assert org.code == 0, org.err
    assert org.out.startswith('activated org:acme/reasoning version 1: model="openai:gpt-4.1"')

    resolved = cli(
        "profiles", "resolve", "reasoning", "--org", "acme", "--domain", "acme-eu", "--json"
    )
    assert resolved.code == 0, resolved.err
    data = resolved.json()
    assert data["profile"]["model"] == "openai:gpt-4.1"
    assert data["profile"]["budget"] == {"daily_usd": "12.5"}
    assert data["profile"]["defaults"]["temperature"] == 0.2
    assert data["sources"]["model"] == "org:acme v1"
    assert data["sources"]["temperature"] == "global v1"

    human = cli("profiles", "resolve", "reasoning", "--org", "acme")
    assert "model" in human.out
    assert "org:acme v1" in human.out
    assert "global v1" in human.out

    shown = cli("profiles", "show", "--org", "acme", "--json")
    assert [v["purpose"] for v in shown.json()] == ["reasoning"]

    cli("profiles", "set", "reasoning", "--org", "acme", "--model", "openai:gpt-4o-mini")
    history = cli("profiles", "history", "reasoning", "--org", "acme", "--json").json()
    assert [(v["version"], v["active"]) for v in history] == [(1, False), (2, True)]
    assert history[0]["reason"] == "acme wants 4.1"

    diff = cli("profiles", "diff", "reasoning", "--org", "acme", "--json").json()
    assert diff == [{"field": "model", "before": "openai:gpt-4.1", "after": "openai:gpt-4o-mini"}]
    assert cli("profiles", "diff", "reasoning", "--org", "acme").out.strip() == (
        'model: "openai:gpt-4.1" -> "openai:gpt-4o-mini"'
    )

    back = cli("profiles", "rollback", "reasoning", "--org", "acme", "--reason", "regressed")
    assert back.code == 0, back.err
    assert back.out.startswith("rolled back org:acme/reasoning to version 1 (now version 3)")
    again = cli("profiles", "resolve", "reasoning", "--org", "acme", "--json").json()
    assert again["profile"]["model"] == "openai:gpt-4.1"

    audit = cli("profiles", "audit", "--org", "acme", "--json").json()
    actions = [e["action"] for e in audit if not e["action"].startswith("admin_")]
    assert actions == ["activate", "activate", "rollback"]
    assert audit[-1]["reason"] == "regressed"


def test_actor_is_the_os_user_whatever_the_options_and_environment_claim(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COMPTROLLER_ACTOR", "ops-bot")
    result = cli(
        "profiles", "set", "reasoning", "--org", "acme", "--model", "openai:gpt-4o",
        "--actor", "ops-bot", "--role", "platform",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "--actor ops-bot is ignored" in result.err
    audit = cli("profiles", "audit", "--json").json()
    assert (audit[-1]["actor"], audit[-1]["role"]) == (os_identity(), "platform")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["profiles", "set", "reasoning", "--model", "openai:gpt-4o"],
            "name the scope: --global, --org ID or --domain ID",
        ),
        (
            ["profiles", "set", "reflexion", "--global", "--model", "openai:gpt-4o"],
            "unknown purpose 'reflexion'",
        ),
        (
            ["profiles", "set", "reasoning", "--global", "--model", "gpt-4o"],
            "expected 'provider:model', got 'gpt-4o'",
        ),
        (["profiles", "set", "reasoning", "--global"], "nothing to set"),
        (
            ["profiles", "set", "reasoning", "--global", "--unset", "colour"],
            "unknown profile field 'colour'",
        ),
        (
            ["profiles", "set", "reasoning", "--global", "--model", "openai:gpt-9"],
            "unknown model openai:gpt-9 for purpose 'reasoning'",
        ),
        (
            ["profiles", "set", "reasoning", "--global", "--model", "anthropic:claude-sonnet-4-5"],
            "no credential for provider 'anthropic' resolvable at global",
        ),
        (
            [
                "profiles",
                "set",
                "code_generation",
                "--org",
                "acme",
                "--model",
                "openai:gpt-4o",
                "--role",
                "org_admin",
                "--actor-org",
                "acme",
            ],
            "purpose 'code_generation' is locked",
        ),
        (
            [
                "profiles",
                "set",
                "reasoning",
                "--org",
                "acme",
                "--model",
                "openai:gpt-4o",
                "--role",
                "domain_admin",
            ],
            "a domain_admin actor needs the domain it administers",
        ),
        (
            ["profiles", "set", "reasoning", "--global", "--daily-budget", "lots"],
            "--daily-budget must be a number of USD",
        ),
        (["profiles", "rollback", "reasoning", "--global", "--to", "4"], "has no version 4"),
        (["profiles", "resolve", "scoring"], "no model for purpose 'scoring' at global"),
    ],
)
def test_refusals_are_one_line_on_stderr_with_exit_2(cli, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    cli("profiles", "set", "reasoning", "--global", "--model", "openai:gpt-4o")
    result = cli(*args)
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("comptroller: error: ")
    assert message in lines[0]
    assert result.out == ""


def test_show_of_a_scope_without_profiles_says_it_inherits(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("profiles", "show", "--org", "nobody")
    assert result.code == 0
    assert result.out.strip() == "org:nobody: no profiles set (everything inherits)"


def test_cli_changes_land_as_profile_events_in_the_embedded_duckdb(
    cli, monkeypatch: pytest.MonkeyPatch, data_dir
) -> None:  # type: ignore[no-untyped-def]
    from comptroller.analytics import connect

    monkeypatch.setenv("COMPTROLLER_TELEMETRY", "embedded")
    cli("profiles", "set", "embedding", "--global", "--model", "openai:text-embedding-3-small")
    cli(
        "profiles",
        "set",
        "embedding",
        "--global",
        "--model",
        "openai:text-embedding-3-large",
        "--reason",
        "bigger",
    )
    back = cli("profiles", "rollback", "embedding", "--global")
    assert back.code == 0, back.err
    assert "profile events not recorded" not in back.err
    con = connect(data_dir / "comptroller.duckdb", read_only=True)
    try:
        rows = con.execute(
            "select action, scope_kind, purpose, version, previous_version, model, reason"
            " from profile_events order by ts, version"
        ).fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows].count("activated") == 2
    assert [r[0] for r in rows].count("rolled_back") == 1
    assert [r[0] for r in rows].count("warning") == 2  # each embedding model change
    activated = [r for r in rows if r[0] == "activated"]
    assert activated[1][2:] == ("embedding", 2, 1, "openai:text-embedding-3-large", "bigger")
