"""OAuth credentials that refresh (issue 17): renewed at a real local token endpoint shortly
before they expire or after a 401, rotated in place under a stable ref, one grant per
expiry whatever the threads and processes, clear errors that never carry a token, and a
setting that turns them off."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from test_profiles_kit import (
    ACME,
    GLOBAL,
    PLATFORM,
    STORE_PARAMS,
    bind,
    make_settings,
    ref,
    spec,
    store_urls,
)

from comptroller.cli import main
from comptroller.config import load_settings
from comptroller.control import ControlPlane, ProviderError, ResolvedProfile
from comptroller.control._credentials import (
    CredentialRefreshFailed,
    CredentialStore,
    OAuthNotAllowed,
)
from comptroller.control.profiles import (
    ENV_MASTER_KEY,
    InMemoryProfileEvents,
    ProfileService,
    generate_master_key,
)
from comptroller.control.testing import FakeClock, FakeOpenAIServer, FakeTokenServer, ServerReply

MARGIN_S = 60.0


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'profiles.sqlite'}"


@pytest.fixture
def tokens() -> Iterator[FakeTokenServer]:
    with FakeTokenServer() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def master_key() -> str:
    return generate_master_key()


def open_service(
    url: str,
    data_dir: Path,
    master_key: str,
    *,
    clock: FakeClock | None = None,
    allow: bool = True,
) -> ProfileService:
    settings = make_settings(
        data_dir, allow_oauth_credentials=allow, oauth_refresh_margin_s=MARGIN_S
    )
    service = ProfileService.from_settings(
        settings,
        url=url,
        events=InMemoryProfileEvents(),
        environ={ENV_MASTER_KEY: master_key},
        clock=clock.monotonic if clock is not None else time.monotonic,
        wall_clock=clock,
    )
    bind(service)
    return service


@pytest.fixture
def service(
    store_url: str, data_dir: Path, master_key: str, clock: FakeClock
) -> Iterator[ProfileService]:
    service = open_service(store_url, data_dir, master_key, clock=clock)
    yield service
    service.close()


def profile(model: str = "openai:gpt-4o-mini", **fields: object) -> ResolvedProfile:
    return ResolvedProfile(purpose="reasoning", model=ref(model), **fields)  # type: ignore[arg-type]


def resolve(creds: CredentialStore, source: str = "managed") -> str | None:
    """The secret a call at org acme would use (`managed`: the global credential)."""
    return creds.resolve_secret(profile(credential_source=source), domain=None, org="acme")


def test_a_token_is_renewed_shortly_before_it_expires_and_rotated_in_place(
    service: ProfileService, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    creds = service.credentials
    first = creds.set(
        GLOBAL, "openai", tokens.bundle(expires_at=clock.time() + 600), actor=PLATFORM, kind="oauth"
    )
    changes: list[None] = []
    creds.on_change(lambda: changes.append(None))

    assert resolve(creds) == tokens.issued[0]  # the access token, not the bundle
    clock.advance(600 - MARGIN_S - 1)
    assert resolve(creds) == tokens.issued[0]  # not yet within the margin
    assert tokens.grants == []

    clock.advance(2)
    renewed = resolve(creds)
    assert renewed == tokens.issued[1]
    (grant,) = tokens.grants
    assert grant["grant_type"] == "refresh_token"
    assert grant["client_id"] == "comptroller-test"
    after = creds.get_info(first.ref)
    assert after is not None
    assert (after.ref, after.kind, after.provider) == (first.ref, "oauth", "openai")
    assert after.revision != first.revision
    assert after.updated_by == "comptroller (oauth refresh)"
    assert changes == [None]
    # The renewed token lasts its lifetime: the next uses do not refresh again.
    assert resolve(creds) == renewed
    assert len(tokens.grants) == 1
    # Every token handed out is known to the redactor (a provider may echo it).
    assert creds.redactor.redact(f"bad key {renewed}") == "bad key [REDACTED]"
    audit = service.audit(scope=GLOBAL)
    assert audit[-1].reason == "oauth refresh"
    assert renewed not in json.dumps([str(entry) for entry in audit])


def test_refresh_is_serialised_across_threads(
    service: ProfileService, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    creds = service.credentials
    creds.set(
        GLOBAL, "openai", tokens.bundle(expires_at=clock.time() + 10), actor=PLATFORM, kind="oauth"
    )
    tokens.delay_s = 0.2  # every thread arrives while the first grant is running
    barrier = threading.Barrier(8)
    got: list[str | None] = []

    def worker() -> None:
        barrier.wait()
        got.append(resolve(creds))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens.grants) == 1
    assert got == [tokens.issued[1]] * 8


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from comptroller.config import load_settings
    from comptroller.control import ModelRef, ResolvedProfile
    from comptroller.control.profiles import ProfileService

    url, data_dir, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    service = ProfileService.from_settings(load_settings(None, data_dir=data_dir), url=url)
    profile = ResolvedProfile(purpose="reasoning", model=ModelRef.parse("openai:gpt-4o-mini"))
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    print(service.credentials.resolve_secret(profile, domain=None, org="acme"), flush=True)
    """
)


def test_refresh_is_serialised_across_processes(
    store_url: str, data_dir: Path, master_key: str, tokens: FakeTokenServer, tmp_path: Path
) -> None:
    # Real time here: the other process has no fake clock.
    service = open_service(store_url, data_dir, master_key)
    try:
        service.credentials.set(
            GLOBAL,
            "openai",
            tokens.bundle(expires_at=time.time() + 10),
            actor=PLATFORM,
            kind="oauth",
        )
        tokens.delay_s = 0.3
        go = tmp_path / "go"
        env = {
            **os.environ,
            ENV_MASTER_KEY: master_key,
            "COMPTROLLER_CONTROL_ALLOW_OAUTH_CREDENTIALS": "1",
            "COMPTROLLER_CONTROL_OAUTH_REFRESH_MARGIN_S": str(MARGIN_S),
        }
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, store_url, str(data_dir), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
            go.touch()
            mine = resolve(service.credentials)
            theirs, errors = child.communicate(timeout=60)
        finally:
            child.kill()
        assert child.returncode == 0, errors
        # One grant: the token endpoint rotates refresh tokens, so a second grant from the
        # same refresh token would have failed with invalid_grant.
        assert len(tokens.grants) == 1
        assert mine == theirs.strip() == tokens.issued[1]
    finally:
        service.close()


def test_a_call_renews_the_token_and_keeps_resolving_after_a_rollback(
    sqlite_url: str, data_dir: Path, master_key: str, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    service = open_service(sqlite_url, data_dir, master_key, clock=clock)
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    try:
        with FakeOpenAIServer() as server:
            info = service.credentials.set(
                ACME,
                "openai",
                tokens.bundle(expires_at=clock.time() + 3600),
                actor=PLATFORM,
                kind="oauth",
            )
            service.set_profile(
                ACME,
                "reasoning",
                spec(model="openai:gpt-4o-mini", base_url=server.base_url, credential_source="byo"),
                actor=PLATFORM,
            )
            with ControlPlane(settings, resolver=service) as plane:
                model = plane.chat_model("reasoning", org="acme", context="ci")
                model.invoke("first")
                model.invoke("second")  # the cached model: no resolution, no refresh
                clock.advance(3600 - MARGIN_S + 1)
                model.invoke("third")  # the cached resolution expired with the token
                service.set_profile(ACME, "reasoning", spec(temperature=0.5), actor=PLATFORM)
                service.rollback(ACME, "reasoning", actor=PLATFORM)
                model.invoke("after the rollback")
            assert service.credentials.get_info(info.ref) is not None
    finally:
        service.close()
    auth = [headers.get("authorization") for headers in server.headers]
    first, second = tokens.issued
    assert auth == [f"Bearer {first}"] * 2 + [f"Bearer {second}"] * 2
    assert len(tokens.grants) == 1


def call(model: Any, how: str, text: str) -> str:
    if how == "ainvoke":
        return str(asyncio.run(model.ainvoke(text)).content)
    if how == "stream":
        return "".join(str(chunk.content) for chunk in model.stream(text))
    return str(model.invoke(text).content)


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream"])
def test_a_401_renews_the_token_and_retries_the_same_model_once(
    sqlite_url: str,
    data_dir: Path,
    master_key: str,
    tokens: FakeTokenServer,
    clock: FakeClock,
    how: str,
) -> None:
    service = open_service(sqlite_url, data_dir, master_key, clock=clock)
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    try:
        with FakeOpenAIServer() as server:
            service.credentials.set(
                GLOBAL,
                "openai",
                tokens.bundle(expires_at=clock.time() + 3600),
                actor=PLATFORM,
                kind="oauth",
            )
            service.set_profile(
                GLOBAL,
                "reasoning",
                spec(model="openai:gpt-4o-mini", base_url=server.base_url),
                actor=PLATFORM,
            )
            with ControlPlane(settings, resolver=service) as plane:
                model = plane.chat_model("reasoning", org="acme", context="ci")
                server.script("gpt-4o-mini", ServerReply.server_error(401))
                assert call(model, how, "revoked early")
                # A second 401 right after the renewal is the provider's answer: raised.
                server.script(
                    "gpt-4o-mini", ServerReply.server_error(401), ServerReply.server_error(401)
                )
                with pytest.raises(ProviderError) as caught:
                    model.invoke("still refused")
                assert caught.value.status == 401
    finally:
        service.close()
    auth = [headers.get("authorization") for headers in server.headers]
    t1, t2, t3 = tokens.issued
    assert auth == [f"Bearer {t1}", f"Bearer {t2}", f"Bearer {t2}", f"Bearer {t3}"]
    assert len(tokens.grants) == 2


def test_a_401_with_an_api_key_is_raised_without_a_retry(
    sqlite_url: str, data_dir: Path, master_key: str
) -> None:
    service = open_service(sqlite_url, data_dir, master_key)
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    try:
        with FakeOpenAIServer() as server:
            service.credentials.set(GLOBAL, "openai", "sk-static-key", actor=PLATFORM)
            service.set_profile(
                GLOBAL,
                "reasoning",
                spec(model="openai:gpt-4o-mini", base_url=server.base_url),
                actor=PLATFORM,
            )
            server.script("gpt-4o-mini", ServerReply.server_error(401))
            with (
                ControlPlane(settings, resolver=service) as plane,
                pytest.raises(ProviderError) as caught,
            ):
                plane.chat_model("reasoning", org="acme", context="ci").invoke("hi")
            assert caught.value.status == 401
            assert server.request_count() == 1
    finally:
        service.close()


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [(400, "invalid_grant", "invalid_grant"), (503, None, "http_503"), (0, None, "unreachable")],
)
def test_a_failed_refresh_names_the_credential_and_the_code_never_a_token(
    service: ProfileService,
    tokens: FakeTokenServer,
    clock: FakeClock,
    status: int,
    error: str | None,
    code: str,
) -> None:
    creds = service.credentials
    bundle = tokens.bundle(expires_at=clock.time() + 5)
    info = creds.set(ACME, "openai", bundle, actor=PLATFORM, kind="oauth")
    if status:
        tokens.fail(status, error)
    else:
        tokens.stop()  # nothing listens at the token URL any more
    clock.advance(10)  # expired: nothing to fall back on
    with pytest.raises(CredentialRefreshFailed) as caught:
        resolve(creds, "byo")
    message = str(caught.value)
    assert info.ref in message
    assert "'openai'" in message
    assert "org:acme" in message
    assert code in message
    assert "credentials set --kind oauth --provider openai --org acme" in message
    assert caught.value.code == code
    for secret in json.loads(bundle).values():
        if isinstance(secret, str) and secret.startswith(("at-", "rt-")):
            assert secret not in message
            assert secret not in repr(caught.value)


def test_a_failed_refresh_of_a_token_that_still_works_keeps_using_it(
    service: ProfileService, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    creds = service.credentials
    creds.set(
        GLOBAL, "openai", tokens.bundle(expires_at=clock.time() + 30), actor=PLATFORM, kind="oauth"
    )
    tokens.fail(503, None)
    assert resolve(creds) == tokens.issued[0]  # within the margin, the refresh failed
    clock.advance(4)
    assert resolve(creds) == tokens.issued[0]  # not asked again so soon
    assert len(tokens.grants) == 1
    clock.advance(2)
    assert resolve(creds) == tokens.issued[1]  # asked again: the endpoint is back
    assert len(tokens.grants) == 2


def test_a_call_whose_token_cannot_be_renewed_fails_with_that_error(
    sqlite_url: str, data_dir: Path, master_key: str, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    service = open_service(sqlite_url, data_dir, master_key, clock=clock)
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    try:
        with FakeOpenAIServer() as server:
            bundle = tokens.bundle(expires_at=clock.time() + 5)
            info = service.credentials.set(GLOBAL, "openai", bundle, actor=PLATFORM, kind="oauth")
            service.set_profile(
                GLOBAL,
                "reasoning",
                spec(model="openai:gpt-4o-mini", base_url=server.base_url),
                actor=PLATFORM,
            )
            clock.advance(10)
            tokens.revoke_refresh_tokens()  # the user revoked the grant
            with ControlPlane(settings, resolver=service) as plane:
                model = plane.chat_model("reasoning", org="acme", context="ci")
                for _ in range(2):
                    with pytest.raises(CredentialRefreshFailed, match="invalid_grant") as caught:
                        model.invoke("hi")
                    assert info.ref in str(caught.value)
                    assert tokens.issued[0] not in str(caught.value)
            assert server.request_count() == 0  # never called with an expired token
    finally:
        service.close()
    assert len(tokens.grants) == 1  # the second call did not ask again so soon


def test_oauth_credentials_off_refuses_to_set_and_to_resolve(
    sqlite_url: str, data_dir: Path, master_key: str, tokens: FakeTokenServer
) -> None:
    bundle = tokens.bundle()
    off = open_service(sqlite_url, data_dir, master_key, allow=False)
    on = open_service(sqlite_url, data_dir, master_key, allow=True)
    try:
        with pytest.raises(OAuthNotAllowed) as refused:
            off.credentials.set(GLOBAL, "openai", bundle, actor=PLATFORM, kind="oauth")
        assert "COMPTROLLER_CONTROL_ALLOW_OAUTH_CREDENTIALS" in str(refused.value)
        assert off.credentials.list() == []
        # Stored while allowed; a process with the setting off does not use it.
        info = on.credentials.set(GLOBAL, "openai", bundle, actor=PLATFORM, kind="oauth")
        with pytest.raises(OAuthNotAllowed) as unused:
            resolve(off.credentials)
        assert info.ref in str(unused.value)
        assert tokens.issued[0] not in str(unused.value)
        # An API key is unaffected by the setting.
        off.credentials.set(ACME, "anthropic", "sk-ant-static", actor=PLATFORM)
        got = off.credentials.resolve_secret(
            profile("anthropic:claude-sonnet-4-5", credential_source="byo"),
            domain=None,
            org="acme",
        )
        assert got == "sk-ant-static"
    finally:
        off.close()
        on.close()


@pytest.mark.parametrize(
    ("bundle", "says"),
    [
        ("at-plain-token-not-json", "not JSON"),
        ('["at-in-a-list"]', "JSON object"),
        (
            '{"access_token": "at-x", "refresh_token": "rt-x"}',
            "lacks token_url, client_id, expires_at",
        ),
        (
            '{"access_token": "at-x", "refresh_token": "rt-x", "expires_at": "soon", '
            '"token_url": "https://idp.example/token", "client_id": "c"}',
            "expires_at must be epoch seconds",
        ),
        (
            '{"access_token": "at-x", "refresh_token": "rt-x", "expires_at": 1, '
            '"token_url": "http://idp.example/token", "client_id": "c"}',
            "must be an https:// URL",
        ),
        (
            '{"access_token": "at-x", "refresh_token": "rt-x", "expires_at": 1, '
            '"token_url": "https://idp.example/token", "client_id": "c", "id_token": "at-y"}',
            "unknown fields id_token",
        ),
    ],
)
def test_a_malformed_bundle_is_refused_without_echoing_it(
    service: ProfileService, bundle: str, says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        service.credentials.set(GLOBAL, "openai", bundle, actor=PLATFORM, kind="oauth")
    message = str(caught.value)
    for secret in ("at-plain", "at-in-a-list", "at-x", "rt-x", "at-y"):
        assert secret not in message


def test_cli_sets_an_oauth_bundle_from_a_file_only_when_allowed(
    data_dir: Path,
    tokens: FakeTokenServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    bundle = tmp_path / "bundle.json"
    bundle.write_text(tokens.bundle())
    set_args = ("credentials", "set", "--provider", "openai", "--global", "--kind", "oauth")
    assert run("admin", "init")[0] == 0
    code, _, err = run(*set_args, "--from-file", str(bundle))
    assert code != 0
    assert "OAuth credentials are turned off" in err
    assert tokens.issued[0] not in err

    monkeypatch.setenv("COMPTROLLER_CONTROL_ALLOW_OAUTH_CREDENTIALS", "true")
    code, out, err = run(*set_args, "--from-file", str(bundle))
    assert code == 0, err
    assert out.startswith("stored oauth for openai at global (ref cred_")
    assert tokens.issued[0] not in out + err
    # Listed with when its token expires, never the token.
    code, out, err = run("credentials", "list")
    assert code == 0, err
    assert "\toauth\t" in out
    assert "\texpires " in out
    code, out, err = run("credentials", "list", "--json")
    (row,) = json.loads(out)
    stored = json.loads(bundle.read_text())
    expires = datetime.fromisoformat(row["expires_at"]).timestamp()
    assert expires == pytest.approx(stored["expires_at"], abs=1)
    assert stored["access_token"] not in out
    assert stored["refresh_token"] not in out
    # A bundle stored already expired says so (it is renewed on first use).
    bundle.write_text(tokens.bundle(expires_at=time.time() - 60))
    anthropic = ("credentials", "set", "--provider", "anthropic", "--global", "--kind", "oauth")
    assert run(*anthropic, "--from-file", str(bundle))[0] == 0
    code, out, err = run("credentials", "list")
    lines = {line.split("\t")[1]: line for line in out.splitlines()}
    assert "\texpired " in lines["anthropic"]
    assert "\texpires " in lines["openai"]


def test_a_token_endpoint_that_does_not_answer_in_time_fails_with_timeout(
    service: ProfileService, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    creds = service.credentials
    info = creds.set(
        GLOBAL, "openai", tokens.bundle(expires_at=clock.time() + 5), actor=PLATFORM, kind="oauth"
    )
    creds.oauth_timeout_s = 0.2
    tokens.delay_s = 2.0
    clock.advance(10)
    started = time.monotonic()
    with pytest.raises(CredentialRefreshFailed) as caught:
        resolve(creds)
    assert time.monotonic() - started < 1.5
    assert caught.value.code == "timeout"
    assert info.ref in str(caught.value)


def test_a_token_endpoint_without_a_usable_lifetime_does_not_refresh_at_every_call(
    service: ProfileService, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    creds = service.credentials
    creds.set(
        GLOBAL, "openai", tokens.bundle(expires_at=clock.time() + 5), actor=PLATFORM, kind="oauth"
    )
    tokens.lifetime_s = 0  # `expires_in: 0`: taken as the default lifetime, not "due now"
    assert resolve(creds) == tokens.issued[1]
    clock.advance(600)
    assert resolve(creds) == tokens.issued[1]
    assert len(tokens.grants) == 1


def test_the_expiry_of_an_oauth_credential_can_be_read_never_its_tokens(
    service: ProfileService, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    creds = service.credentials
    expires = clock.time() + 600
    info = creds.set(
        GLOBAL, "openai", tokens.bundle(expires_at=expires), actor=PLATFORM, kind="oauth"
    )
    key = creds.set(ACME, "openai", "sk-static", actor=PLATFORM)
    at = creds.oauth_expiry(info.ref)
    assert at is not None
    assert at.timestamp() == pytest.approx(expires)
    assert creds.oauth_expiry(key.ref) is None
    assert creds.oauth_expiry("cred_missing") is None
    clock.advance(600 - MARGIN_S + 1)
    resolve(creds)  # renewed: the expiry moves on
    renewed = creds.oauth_expiry(info.ref)
    assert renewed is not None
    assert renewed.timestamp() == pytest.approx(clock.time() + 3600)


def test_a_call_that_fails_to_renew_is_recorded_as_an_error_without_a_token(
    sqlite_url: str,
    data_dir: Path,
    master_key: str,
    tokens: FakeTokenServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from comptroller.control.testing import InMemorySink

    service = open_service(sqlite_url, data_dir, master_key, clock=clock)
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    sink = InMemorySink()
    try:
        with FakeOpenAIServer() as server:
            bundle = tokens.bundle(expires_at=clock.time() + 30)  # within the margin
            info = service.credentials.set(GLOBAL, "openai", bundle, actor=PLATFORM, kind="oauth")
            service.set_profile(
                GLOBAL,
                "reasoning",
                spec(model="openai:gpt-4o-mini", base_url=server.base_url),
                actor=PLATFORM,
            )
            tokens.fail(503, None)
            with ControlPlane(settings, resolver=service, sink=sink) as plane:
                model = plane.chat_model("reasoning", org="acme", context="ci")
                with caplog.at_level("WARNING"):
                    model.invoke("the token still works")  # the failed refresh is logged
                clock.advance(31)
                tokens.revoke_refresh_tokens()
                with pytest.raises(CredentialRefreshFailed) as caught:
                    model.invoke("the token expired")
                plane.flush()
    finally:
        service.close()
    assert caught.value.ref == info.ref
    warned = [r.getMessage() for r in caplog.records if "using the current token" in r.message]
    assert warned
    assert info.ref in warned[0]
    assert "http_503" in warned[0]
    calls = sink.call_spans()
    assert [span.attributes["comptroller.outcome"] for span in calls] == ["ok", "error"]  # type: ignore[index]
    failed = calls[-1]
    assert failed.attributes["error.type"] == "CredentialRefreshFailed"  # type: ignore[index]
    assert failed.status.description is not None
    assert info.ref in failed.status.description
    assert len(sink.usage_rows()) == 1  # the provider was called once: one usage row
    recorded = json.dumps(
        [[dict(span.attributes or {}), span.status.description] for span in sink.spans()]
        + [sink.usage_rows(), [r.getMessage() for r in caplog.records]],
        default=str,
    )
    for secret in (*json.loads(bundle).values(), *tokens.issued):
        if isinstance(secret, str) and secret.startswith(("at-", "rt-")):
            assert secret not in recorded
            assert secret not in str(caught.value) + repr(caught.value)


def test_oauth_is_allowed_by_default_only_in_local_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("COMPTROLLER_ENVIRONMENT", raising=False)
    assert load_settings().oauth_allowed is False  # nothing says where this runs: off
    assert load_settings(environment="development").oauth_allowed is True
    assert load_settings(environment="local").oauth_allowed is True
    assert load_settings(environment="production").oauth_allowed is False
    # The explicit setting wins both ways.
    off = load_settings(environment="development", control={"allow_oauth_credentials": False})
    assert off.oauth_allowed is False
    on = load_settings(environment="production", control={"allow_oauth_credentials": True})
    assert on.oauth_allowed is True
    # The environment OpenTelemetry is told about is comptroller's too.
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "service.name=shop,deployment.environment.name=development"
    )
    assert load_settings().environment == "development"
    assert load_settings().oauth_allowed is True
    monkeypatch.setenv("COMPTROLLER_ENVIRONMENT", "production")
    assert load_settings().oauth_allowed is False


def test_cli_in_local_development_sets_an_oauth_bundle_without_the_flag(
    data_dir: Path,
    tokens: FakeTokenServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("COMPTROLLER_CONTROL_ALLOW_OAUTH_CREDENTIALS", raising=False)
    monkeypatch.setenv("COMPTROLLER_ENVIRONMENT", "development")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(tokens.bundle())
    main_args = ("credentials", "set", "--provider", "openai", "--global", "--kind", "oauth")
    codes = []
    for args in (("admin", "init"), (*main_args, "--from-file", str(bundle))):
        try:
            main(list(args))
            codes.append(0)
        except SystemExit as exc:
            codes.append(int(exc.code or 0))
    out = capsys.readouterr()
    assert codes == [0, 0], out.err
    assert "stored oauth for openai at global" in out.out
