"""The planted-secret search: a unique key goes in, and is looked for in every output.

Every operation runs (including the failing ones and the CLI); the key must not appear in a
repr, an exception (message, repr, traceback), a log line (SQLAlchemy statement logging on),
an audit row, any stored column, an event exported through the OTel log pipeline, or the
CLI's stdout and stderr. Only `resolve_secret`, the call path's accessor, returns it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.util.types import AttributeValue
from test_profiles_kit import ACME, GLOBAL, PLATFORM, STORE_PARAMS, make_service, spec, store_urls

from comptroller.cli import main
from comptroller.control import ResolvedProfile
from comptroller.control._store_schema import metadata
from comptroller.control.profiles import ENV_MASTER_KEY, Actor, ProfileService, generate_master_key


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


class OTelEvents:
    """Profile events through the real OTel SDK log pipeline into an in-memory exporter."""

    def __init__(self) -> None:
        self.exporter = InMemoryLogRecordExporter()
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.exporter))
        self.logger = self.provider.get_logger("test")

    def emit(self, event_name: str, attributes: Mapping[str, AttributeValue]) -> None:
        self.logger.emit(event_name=event_name, attributes=dict(attributes))

    def exported(self) -> list[str]:
        return [record.to_json() for record in self.exporter.get_finished_logs()]


def test_planted_secret_appears_in_no_output(
    store_url: str,
    data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = uuid.uuid4().hex
    planted = f"sk-PLANTED-{token}"
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # statements and parameters
    outputs: list[str] = []

    def attempt(operation: Callable[[], object]) -> object:
        try:
            result = operation()
        except Exception as exc:
            outputs.append(str(exc))
            outputs.append(repr(exc))
            outputs.append("".join(traceback.format_exception(exc)))
            return exc
        outputs.append(repr(result))
        return result

    events = OTelEvents()
    monkeypatch.setenv(ENV_MASTER_KEY, generate_master_key())
    rig = make_service(
        store_url,
        data_dir,
        environ=dict(__import__("os").environ),
        allow_oauth_credentials=True,
    )
    service: ProfileService = rig.service
    service.events = events
    creds = service.credentials
    intruder = Actor(name="mallory", role="org_admin", org="globex")

    # --- every credential operation, successful and failing ---------------------------
    attempt(lambda: creds.set(GLOBAL, "openai", planted, actor=PLATFORM))
    attempt(lambda: creds.set(ACME, "openai", planted, actor=PLATFORM, reason="byo"))
    attempt(lambda: creds.set(ACME, "openai", planted + "-rotated", actor=PLATFORM))
    attempt(
        lambda: creds.set(
            ACME,
            "x_ai",
            json.dumps(
                {
                    "access_token": "at-" + planted,
                    "refresh_token": planted,
                    "expires_at": 4_102_444_800,
                    "token_url": "https://idp.example/token",
                    "client_id": "comptroller",
                }
            ),
            actor=PLATFORM,
            kind="oauth",
        )
    )
    attempt(lambda: creds.set(ACME, "openai", planted, actor=intruder))  # PermissionDenied
    attempt(lambda: creds.set(ACME, "bad provider", planted, actor=PLATFORM))  # ValueError
    attempt(lambda: creds.set(ACME, planted, "x", actor=PLATFORM))  # key pasted as provider
    attempt(lambda: creds.set(ACME, planted + " !", "x", actor=PLATFORM))  # and malformed
    attempt(lambda: creds.set(ACME, "openai", planted, actor=PLATFORM, kind="cookie"))  # type: ignore[arg-type]
    attempt(lambda: creds.set(GLOBAL, "openai", planted, actor=intruder))
    attempt(lambda: creds.list())
    attempt(lambda: creds.configured_providers(ACME))
    attempt(lambda: creds.find("openai", source="byo", ref=None, domain=None, org="acme"))
    info = creds.list(ACME)[0]
    attempt(lambda: creds.get_info(info.ref))
    attempt(lambda: info.to_json())

    # --- profiles that use the credentials, and their refusals ---------------------------
    attempt(
        lambda: service.set_profile(
            ACME, "reasoning", spec(model="openai:gpt-4o", credential_source="byo"), actor=PLATFORM
        )
    )
    attempt(
        lambda: service.set_profile(
            ACME, "reasoning", spec(model="anthropic:claude-sonnet-4-5"), actor=PLATFORM
        )
    )
    attempt(
        lambda: service.set_profile(ACME, "reasoning", spec(model="openai:gpt-9"), actor=PLATFORM)
    )
    attempt(
        lambda: service.set_profile(
            ACME, "reasoning", spec(credential_ref="cred_missing"), actor=PLATFORM
        )
    )
    attempt(lambda: service.rollback(ACME, "reasoning", to_version=9, actor=PLATFORM))
    resolved = service.resolve("reasoning", domain=None, org="acme")
    outputs.append(repr(resolved))
    # The call path's accessor is the one place the plaintext comes out.
    assert creds.resolve_secret(resolved, domain=None, org="acme") == planted + "-rotated"

    # --- failures while opening: wrong master key, altered row ---------------------------
    wrong = make_service(store_url, data_dir, environ={ENV_MASTER_KEY: generate_master_key()})
    attempt(lambda: wrong.service.credentials.resolve_secret(resolved, domain=None, org="acme"))
    wrong.service.close()
    malformed = make_service(store_url, data_dir, environ={ENV_MASTER_KEY: planted})
    attempt(lambda: malformed.service.credentials.set(ACME, "openai", "x", actor=PLATFORM))
    malformed.service.close()
    with service.store.engine.begin() as con:
        con.execute(
            sa.text("UPDATE comptroller_credentials SET scope_id = 'acme2' WHERE provider = 'x_ai'")
        )
    attempt(
        lambda: creds.resolve_secret(
            ResolvedProfile(purpose="reasoning", model=resolved.model, credential_source="byo"),
            domain=None,
            org="acme2",
            provider="x_ai",
        )
    )
    with service.store.engine.begin() as con:
        con.execute(
            sa.text("UPDATE comptroller_credentials SET scope_id = 'acme' WHERE provider = 'x_ai'")
        )

    # --- rotation and deletion --------------------------------------------------------------
    monkeypatch.setenv("NEXT_MASTER_KEY", generate_master_key())
    attempt(lambda: creds.rotate_master_key(actor=PLATFORM))  # refused: env key without a new one
    attempt(lambda: creds.rotate_master_key(actor=intruder))
    attempt(lambda: creds.delete(ACME, "x_ai", actor=PLATFORM))
    attempt(lambda: creds.delete(ACME, "x_ai", actor=PLATFORM))  # CredentialNotFound

    # --- reprs of everything an operator or a debugger may print -----------------------------
    outputs += [repr(service), repr(service.store), repr(creds), repr(rig.environ.keys())]
    outputs += [repr(v) for v in service.history(ACME, "reasoning")]
    outputs += [repr(e) for e in service.audit()]

    # --- the CLI, including its errors -----------------------------------------------------
    def cli(*args: str, stdin: str = "") -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        with contextlib.suppress(SystemExit):
            main(list(args))
        captured = capsys.readouterr()
        outputs.extend([captured.out, captured.err])

    cli("credentials", "set", "--provider", "anthropic", "--global", stdin=planted + "\n")
    cli("credentials", "set", "--provider", "anthropic", "--global", "--json", stdin=planted)
    cli(
        "credentials",
        "set",
        "--provider",
        "anthropic",
        "--org",
        "globex",
        "--role",
        "org_admin",
        "--actor-org",
        "acme",
        stdin=planted,
    )
    cli(
        "credentials", "set", "--provider", "anthropic", "--global", planted
    )  # secret in argv: refused, not echoed
    cli("credentials", "set", "--provider", planted, "--global", stdin="x")  # key as provider
    monkeypatch.setenv("PLANTED_VAR", planted)
    cli(
        "credentials",
        "set",
        "--provider",
        "mistral_ai",
        "--org",
        "acme",
        "--from-env",
        "PLANTED_VAR",
    )
    cli("credentials", "list")
    cli("credentials", "list", "--json")
    cli("credentials", "rotate-master-key", "--new-key-env", "NEXT_MASTER_KEY", "--json")
    cli("credentials", "delete", "--provider", "mistral_ai", "--org", "acme")
    cli("credentials", "delete", "--provider", "mistral_ai", "--org", "acme")
    cli(
        "profiles",
        "set",
        "reasoning",
        "--org",
        "acme",
        "--model",
        "anthropic:claude-sonnet-4-5",
        "--credential-source",
        "managed",
    )
    cli("profiles", "resolve", "reasoning", "--org", "acme", "--json")
    cli("profiles", "history", "reasoning", "--org", "acme")
    cli("profiles", "audit", "--json")

    # --- everything stored: audit rows and every column of every table ---------------------
    with service.store.engine.connect() as con:
        for table in metadata.sorted_tables:
            for row in con.execute(sa.select(table)):
                outputs.append(repr(tuple(row)))
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        assert token.encode() not in bytes(value), (
                            f"plaintext stored in {table.name}"
                        )
    # Every file written: the SQLite store and its WAL, the DuckDB file the CLI's profile
    # events landed in (embedded telemetry), key files.
    written = [p for root in (data_dir, tmp_path) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".duckdb" for p in written)
    for path in written:
        assert token.encode() not in path.read_bytes(), f"plaintext in {path}"

    outputs += events.exported()
    outputs.append(caplog.text)
    outputs += [repr(record.args) for record in caplog.records]
    service.close()

    # The search covered real material: events were exported, SQL was logged, errors happened.
    assert len(events.exported()) >= 1
    assert "comptroller_credentials" in caplog.text
    assert any("may not change org:acme" in text for text in outputs)
    assert any("looks like a key" in text for text in outputs)
    leaks = [text for text in outputs if token in text]
    assert leaks == [], (
        f"planted secret found in {len(leaks)} output(s): {[t[:200].replace(token, '<TOKEN>') for t in leaks]}"
    )
