"""`comptroller profiles`: chains with an endpoint per model, provider aliases, importing the
seeds' chains, and the embedding-model warning printed when the change is made."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comptroller.cli import main
from comptroller.control._os_identity import os_identity


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Run]
PROVIDERS = ("openai", "anthropic", "gcp.gemini")
SMALL, LARGE = "openai:text-embedding-3-small", "openai:text-embedding-3-large"
PROXY = "https://llm-proxy.example.com/anthropic"


@pytest.fixture
def bare(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI over a store with a platform admin and no credential."""

    def run(*args: str, stdin: str = "") -> Run:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    monkeypatch.setenv("COMPTROLLER_TELEMETRY", "none")
    assert run("admin", "init").code == 0
    return run


@pytest.fixture
def cli(bare: Cli) -> Cli:
    """The CLI with a global key for each provider the seeds use."""
    for provider in PROVIDERS:
        stored = bare("credentials", "set", "--provider", provider, "--global", stdin="k\n")
        assert stored.code == 0, stored.err
    return bare


def test_each_fallback_may_name_its_own_endpoint(cli: Cli) -> None:
    result = cli(
        "profiles", "set", "reasoning", "--global",
        "--model", "openai:gpt-4o",
        "--fallback", f"anthropic:claude-sonnet-4-6@{PROXY}",
        "--fallback", "anthropic:claude-haiku-4-5",
        "--cross-provider", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    chain = [f"anthropic:claude-sonnet-4-6@{PROXY}", "anthropic:claude-haiku-4-5"]
    assert result.json()["spec"]["fallbacks"] == chain
    assert result.json()["warnings"] == []

    shown = cli("profiles", "show", "--global", "--purpose", "reasoning", "--json").json()
    assert shown[0]["spec"]["fallbacks"] == chain
    resolved = cli("profiles", "resolve", "reasoning", "--json").json()["profile"]
    assert (resolved["model"], resolved["fallbacks"]) == ("openai:gpt-4o", chain)
    human = cli("profiles", "show", "--global").out
    assert f"@{PROXY}" in human

    cli("profiles", "set", "reasoning", "--global", "--fallback", "anthropic:claude-haiku-4-5")
    diff = cli("profiles", "diff", "reasoning", "--global", "--json").json()
    assert diff == [
        {"field": "fallbacks", "before": chain, "after": ["anthropic:claude-haiku-4-5"]}
    ]
    audit = cli("profiles", "audit", "--purpose", "reasoning", "--json").json()
    assert audit[-1]["before"]["spec"]["fallbacks"] == chain

    back = cli("profiles", "rollback", "reasoning", "--global", "--json")
    assert back.code == 0, back.err
    assert back.json()["spec"]["fallbacks"] == chain


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--fallback", "anthropic:claude-haiku-4-5@ftp://proxy", "must start with http://"),
        ("--model", "openai:gpt-4o@http://", "has no host"),
        ("--fallback", "openai:gpt-4o@https://me:sk-live-1@proxy/v1", "credentials set"),
        ("--base-url", "localhost:8000/v1", "must start with http://"),
    ],
)
def test_a_bad_endpoint_is_a_usage_error_and_nothing_is_written(
    cli: Cli, option: str, value: str, message: str
) -> None:
    result = cli("profiles", "set", "reasoning", "--global", option, value)
    assert result.code == 2
    assert message in result.err
    assert "sk-live-1" not in result.err
    assert cli("profiles", "history", "reasoning", "--global", "--json").json() == []


def test_help_documents_the_endpoint_form() -> None:
    from click.testing import CliRunner

    from comptroller.cli._profiles import profiles

    text = CliRunner().invoke(profiles, ["set", "--help"]).output
    assert "PROVIDER:MODEL[@URL]" in text
    assert "--fallback anthropic:claude-sonnet-4-6@https://llm-proxy.example.com" in text


def test_a_gemini_chain_written_as_google_is_stored_as_gcp_gemini(cli: Cli) -> None:
    result = cli(
        "profiles", "set", "scoring", "--global",
        "--model", "google:gemini-2.5-flash",
        "--fallback", "gcp.gemini:gemini-3.1-flash-lite",
        "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["spec"] == {
        "model": "gcp.gemini:gemini-2.5-flash",
        "fallbacks": ["gcp.gemini:gemini-3.1-flash-lite"],
    }


# --- the embedding-model warning -------------------------------------------------------------


def test_set_and_rollback_print_the_embedding_model_change(cli: Cli) -> None:
    first = cli("profiles", "set", "embedding", "--global", "--model", SMALL)
    assert first.code == 0, first.err
    assert "warning" not in first.err  # nothing embedded yet

    changed = cli("profiles", "set", "embedding", "--global", "--model", LARGE)
    assert changed.code == 0, changed.err
    (line,) = changed.err.strip().splitlines()
    assert line.startswith("comptroller: warning: the embedding model of global")
    assert f"from {SMALL} to {LARGE}" in line
    assert "vectors made by the old model are incompatible" in line
    assert "re-embed" in line
    assert changed.out.startswith("activated global/embedding version 2")

    back = cli("profiles", "rollback", "embedding", "--global", "--json")
    assert back.code == 0, back.err
    (warning,) = back.json()["warnings"]
    assert warning["warning"] == "embedding_model_changed"
    assert (warning["scope"], warning["before"], warning["after"]) == ("global", LARGE, SMALL)
    assert f"from {LARGE} to {SMALL}" in back.err  # on stderr too, for the operator

    same = cli("profiles", "set", "embedding", "--global", "--temperature", "0", "--json")
    assert same.json()["warnings"] == []
    assert "warning" not in same.err


@pytest.mark.parametrize(
    ("option", "value"),
    [("--model", "openai:gpt-4.1-mini"), ("--fallback", "anthropic:claude-haiku-4-5")],
)
def test_a_chat_model_for_embeddings_is_refused_when_set(cli: Cli, option: str, value: str) -> None:
    args = ("--model", SMALL) if option == "--fallback" else ()
    result = cli("profiles", "set", "embedding", "--global", *args, option, value)
    assert result.code == 2
    assert f"{value} is a chat model" in result.err
    assert "text-embedding-3-small" in result.err  # what to use instead
    assert cli("profiles", "history", "embedding", "--global", "--json").json() == []
    # The same model for a chat purpose is fine.
    assert cli("profiles", "set", "reasoning", "--global", "--model", value).code == 0


def test_the_printed_warning_also_lands_in_duckdb(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    from comptroller.analytics import connect

    monkeypatch.setenv("COMPTROLLER_TELEMETRY", "embedded")
    cli("profiles", "set", "embedding", "--org", "acme", "--model", SMALL)
    changed = cli("profiles", "set", "embedding", "--org", "acme", "--model", LARGE)
    assert "re-embed" in changed.err
    con = connect(data_dir / "comptroller.duckdb", read_only=True)
    try:
        rows = con.execute(
            "select scope_id, model, detail from profile_events where action = 'warning'"
        ).fetchall()
    finally:
        con.close()
    ((scope_id, model, detail),) = rows
    assert (scope_id, model) == ("acme", LARGE)
    assert json.loads(detail)["before"] == SMALL


# --- importing chains ------------------------------------------------------------------------


def chain_of(cli: Cli, purpose: str, *args: str) -> list[str]:
    profile = cli("profiles", "resolve", purpose, *args, "--json").json()["profile"]
    return [profile["model"], *profile["fallbacks"]]


def test_import_seeds_activates_the_design_notes_chains_once(cli: Cli) -> None:
    result = cli("profiles", "import", "--seeds", "--global")
    assert result.code == 0, result.err
    assert result.out.count("activated global/") == 10

    claude = [
        "anthropic:claude-opus-4-7",
        "anthropic:claude-sonnet-4-6",
        "anthropic:claude-haiku-4-5",
    ]
    gemini = ["gcp.gemini:gemini-2.5-flash", "gcp.gemini:gemini-3.1-flash-lite"]
    for purpose in ("reasoning", "agent_turn", "agent_tool", "world_agent", "code_generation"):
        assert chain_of(cli, purpose, "--org", "acme") == claude
    for purpose in ("scoring", "detection"):
        assert chain_of(cli, purpose) == gemini
    assert chain_of(cli, "embedding") == [SMALL]

    audit = cli("profiles", "audit", "--global", "--json").json()
    imports = [e for e in audit if e["action"] == "activate"]
    assert len(imports) == 10
    assert {e["reason"] for e in imports} == {"import seeds"}

    again = cli("profiles", "import", "--seeds", "--global", "--json")
    assert again.code == 0, again.err
    assert again.json()["activated"] == []
    assert len(again.json()["unchanged"]) == 10
    assert len(cli("profiles", "history", "reasoning", "--global", "--json").json()) == 1


def test_import_of_a_file_updates_each_purpose_and_warns_on_an_embedding_switch(
    cli: Cli, tmp_path: Path
) -> None:
    cli("profiles", "import", "--seeds", "--global")
    file = tmp_path / "acme.toml"
    file.write_text(
        "[profiles.scoring]\n"
        'fallbacks = ["google:gemini-2.5-flash-lite"]\n'
        "[profiles.embedding]\n"
        f'model = "{LARGE}"\n'
    )
    result = cli("profiles", "import", str(file), "--global", "--reason", "cheaper", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert [v["purpose"] for v in data["activated"]] == ["scoring", "embedding"]
    assert chain_of(cli, "scoring") == [
        "gcp.gemini:gemini-2.5-flash",  # kept: an import updates the active profile
        "gcp.gemini:gemini-2.5-flash-lite",
    ]
    (warning,) = data["warnings"]
    assert (warning["before"], warning["after"]) == (SMALL, LARGE)
    assert "re-embed" in result.err

    as_json = tmp_path / "acme.json"
    cli("profiles", "set", "scoring", "--org", "acme", "--temperature", "0.1")
    # An empty list is a value: the org's chain does not inherit the global Gemini fallbacks.
    entry = {"model": "openai:gpt-4o-mini", "fallbacks": []}
    as_json.write_text(json.dumps({"profiles": {"scoring": entry}}))
    replaced = cli("profiles", "import", str(as_json), "--org", "acme", "--replace")
    assert replaced.code == 0, replaced.err
    shown = cli("profiles", "show", "--org", "acme", "--json").json()
    assert shown[0]["spec"] == entry  # --replace: the temperature set before is gone
    assert chain_of(cli, "scoring", "--org", "acme") == ["openai:gpt-4o-mini"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[profiles.reasoning]\nmodel = 'openai:gpt-4o'\n[profiles.nonsense]\nmodel = "
         "'openai:gpt-4o'\n", "nonsense"),
        ("[profiles.reasoning]\nmodel = 'openai:gpt-4o'\n[profiles.scoring]\nmodel = "
         "'openai:gpt-99-imaginary'\n", "openai:gpt-99-imaginary"),
        ("[profiles.reasoning]\nmodel = 'openai:gpt-4o@localhost:8000'\n", "@http://HOST"),
        ("[profiles.reasoning]\nmodel = 'openai:gpt-4o@ftp://h'\n", "profiles.reasoning"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_before_anything_is_written(
    cli: Cli, tmp_path: Path, content: str, message: str
) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(content)
    result = cli("profiles", "import", str(file), "--global")
    assert result.code == 2
    assert message in result.err
    assert cli("profiles", "history", "reasoning", "--global", "--json").json() == []


def test_an_import_stopped_by_a_missing_key_says_what_is_active_and_resumes(
    bare: Cli,
) -> None:
    for provider in ("openai", "anthropic"):  # no Gemini key yet
        bare("credentials", "set", "--provider", provider, "--global", stdin="k\n")
    stopped = bare("profiles", "import", "--seeds", "--global")
    assert stopped.code == 2
    assert "import stopped at scoring" in stopped.err
    assert "not imported: scoring, detection, embedding" in stopped.err
    assert "credentials set --provider gcp.gemini --global" in stopped.err
    assert chain_of(bare, "reasoning")[0] == "anthropic:claude-opus-4-7"

    bare("credentials", "set", "--provider", "gcp.gemini", "--global", stdin="k\n")
    resumed = bare("profiles", "import", "--seeds", "--global", "--json")
    assert resumed.code == 0, resumed.err
    assert [v["purpose"] for v in resumed.json()["activated"]] == [
        "scoring",
        "detection",
        "embedding",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--global",), "give a FILE or --seeds"),
        (("--seeds",), "name the scope: --global"),
    ],
)
def test_import_needs_one_source_and_a_scope(
    cli: Cli, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = cli("profiles", "import", *args)
    assert result.code == 2
    assert message in result.err
    both = tmp_path / "x.toml"
    both.write_text("[profiles.reasoning]\nmodel = 'openai:gpt-4o'\n")
    assert "give a FILE or --seeds" in cli("profiles", "import", str(both), "--seeds").err


def test_an_org_admin_cannot_import_the_locked_purposes(cli: Cli) -> None:
    cli("admin", "grant", os_identity(), "--role", "org_admin", "--org", "acme")
    result = cli("profiles", "import", "--seeds", "--org", "acme", "--role", "org_admin",
                 "--actor-org", "acme")  # fmt: skip
    assert result.code == 2
    assert "purpose 'code_generation' is locked" in result.err
    assert "import stopped at code_generation: active at org:acme: none" in result.err
