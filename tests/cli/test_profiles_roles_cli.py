"""The CLI acts as the OS user (or an admin token's identity), never as a claimed one."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from comptroller.cli import main
from comptroller.config import load_settings
from comptroller.control._os_identity import os_identity
from comptroller.control.profiles import Actor, ProfileService, Scope

OPS = Actor.platform("ops")  # the platform admin here is someone else than the OS user
ME = os_identity()
GLOBAL = Scope.global_()


@dataclass
class Run:
    code: int
    out: str
    err: str


Cli = Callable[..., Run]


@pytest.fixture
def service() -> Iterator[ProfileService]:
    settings = load_settings(None)
    settings.ensure_data_dir()
    service = ProfileService.from_settings(settings)
    service.admins.init(OPS.name)
    yield service
    service.close()


@pytest.fixture
def cli(
    service: ProfileService,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
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
    monkeypatch.delenv("COMPTROLLER_ADMIN_TOKEN", raising=False)
    service.credentials.set(GLOBAL, "openai", "sk-roles-test", actor=OPS)
    return run


SET_LOCKED = ("profiles", "set", "code_generation", "--global", "--model", "openai:gpt-4o")


def test_claimed_platform_role_of_an_unbound_user_is_refused_and_audited(
    cli: Cli, service: ProfileService
) -> None:
    result = cli(*SET_LOCKED, "--role", "platform", "--actor", "anyone")
    assert result.code == 2, result.out
    assert f"{ME} (platform) is not an admin of this profile store" in result.err
    assert service.history(GLOBAL, "code_generation") == []
    entry = service.audit(purpose="code_generation")[-1]
    assert (entry.action, entry.actor, entry.role) == ("refused", ME, "platform")
    assert (entry.after or {})["attempted"] == "activate"
    assert "anyone" not in {e.actor for e in service.audit()}
    history = cli("profiles", "history", "code_generation", "--global")
    assert "! refused\t" in history.out
    assert f"\t{ME} (platform)\tactivate\t" in history.out


def test_bound_platform_admin_changes_a_locked_purpose_as_itself(
    cli: Cli, service: ProfileService
) -> None:
    service.admins.grant(Actor.platform(ME), by=OPS)
    result = cli(*SET_LOCKED, "--actor", "anyone")
    assert result.code == 0, result.err
    entry = service.audit(purpose="code_generation")[-1]
    assert (entry.action, entry.actor, entry.role) == ("activate", ME, "platform")
    assert cli("admin", "whoami", "--json").out.strip() == json.dumps(
        {"identity": ME, "grants": [service.admins.bindings_of(ME)[0].to_json()]}
    )


def test_init_is_refused_once_a_platform_admin_exists(cli: Cli) -> None:
    result = cli("admin", "init")
    assert result.code == 2
    assert "has a platform admin already (ops)" in result.err


def test_tokens_prove_identity_and_forged_ones_are_refused(
    cli: Cli, service: ProfileService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.admins.grant(Actor.platform(ME), by=OPS)
    granted = cli("admin", "grant", "ci-bot", "--role", "org_admin", "--org", "acme")
    assert granted.code == 0, granted.err
    minted = cli("admin", "token", "mint", "ci-bot", "--role", "org_admin", "--org", "acme")
    assert minted.code == 0, minted.err
    token = minted.out.strip()
    monkeypatch.setenv("COMPTROLLER_ADMIN_TOKEN", token)
    ok = cli("profiles", "set", "reasoning", "--org", "acme", "--temperature", "0.3")
    assert ok.code == 0, ok.err
    assert service.audit(purpose="reasoning")[-1].actor == "ci-bot"

    # Flip the last hex digit: a fixed suffix would equal the real one once in 256 mints.
    altered = token[:-1] + ("1" if token[-1] == "0" else "0")
    monkeypatch.setenv("COMPTROLLER_ADMIN_TOKEN", altered)
    forged = cli("profiles", "set", "reasoning", "--org", "acme", "--temperature", "0.4")
    assert forged.code == 2
    assert "the admin token is not valid" in forged.err
    assert token[-20:] not in forged.err
    entry = service.audit()[-1]
    assert (entry.action, entry.actor) == ("refused", ME)


def test_a_non_platform_admin_cannot_mint_or_grant(cli: Cli, service: ProfileService) -> None:
    service.admins.grant(Actor(name=ME, role="org_admin", org="acme"), by=OPS)
    minted = cli("admin", "token", "mint", ME, "--role", "org_admin", "--org", "acme")
    assert minted.code == 2
    assert f"{ME} (platform) is not an admin" in minted.err
    assert minted.out == ""
    granted = cli("admin", "grant", ME, "--role", "platform")
    assert granted.code == 2
    assert [e.action for e in service.audit()[-2:]] == ["refused", "refused"]
    assert [b.role for b in service.admins.bindings_of(ME)] == ["org_admin"]


def test_init_by_a_user_who_does_not_own_the_data_directory_is_refused_and_audited(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.getuid() != 0:
        pytest.skip("handing the data directory to another uid needs root")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chown(data_dir, data_dir.stat().st_uid + 4242, -1)
    with pytest.raises(SystemExit) as exit_info:
        main(["admin", "init"])
    assert exit_info.value.code == 2
    assert "only the OS user who owns the data directory" in capsys.readouterr().err
    service = ProfileService.from_settings(load_settings(None))
    try:
        assert service.admins.bindings() == []
        entry = service.audit()[-1]
        assert (entry.action, entry.actor, (entry.after or {})["attempted"]) == (
            "refused",
            ME,
            "admin_init",
        )
    finally:
        service.close()
