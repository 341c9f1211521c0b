"""Cassettes: a test's provider traffic recorded once through the guarded model, replayed with
no provider and no credential, landing the same usage rows in DuckDB.

Real parts throughout: langchain-openai / langchain-anthropic over real HTTP to the local fake
servers while recording, vcrpy's patched transports while replaying, the embedded sink and
its DuckDB file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from comptroller.config import load_settings
from comptroller.control import (
    ControlPlane,
    ModelRef,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control.testing import (
    AnthropicBehaviour,
    CassetteMiss,
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeTokenServer,
    GeminiBehaviour,
    ModelBehaviour,
    cassette,
)
from comptroller.errors import ConfigError, UsageError

OPENAI_SECRET = "sk-test-CASSETTE-0penai-s3cret-7f3a9c"
OPENAI_ORG = "org-CASSETTE-acct-41b2"
OPENAI_PROJECT = "proj_CASSETTE-acct-9d0e"
ANTHROPIC_SECRET = "sk-ant-test-CASSETTE-s3cret-c81d"
GOOGLE_SECRET = "AIzaTest-CASSETTE-s3cret-55e0"
PROMPT = "Summarise the ticket"
PROVIDER_KEYS = (
    "OPENAI_API_KEY",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
)

USAGE_COLUMNS = (
    "provider, operation, request_model, response_model, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, price_source, "
    "estimated, outcome, error_type, attempt, fallback_depth, tenant, org, context, purpose"
)


def echo(request: Mapping[str, Any]) -> str:
    """The answer names how it was asked for, so a replay serving the wrong recording shows."""
    last = request["messages"][-1]["content"]
    if isinstance(last, list):  # Anthropic's content blocks
        last = " ".join(block["text"] for block in last)
    return f"{'streamed' if request.get('stream') else 'buffered'} answer to {last}"


def no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROVIDER_KEYS:
        monkeypatch.delenv(name, raising=False)


def run_calls(
    base_url: str | None, provider: str, model: str, db_file: Path, *, reverse: bool = False
) -> list[str]:
    """A buffered invoke and a stream through a fresh plane whose usage rows land in
    `db_file`; returns the answers (in call order; `reverse`: stream first)."""
    settings = load_settings(None, db=db_file, telemetry="embedded")
    profile = ResolvedProfile(
        purpose="summarise", model=ModelRef(provider=provider, model=model), base_url=base_url
    )
    with ControlPlane(
        settings,
        resolver=StaticProfiles({"summarise": profile}),
        retry_policy=RetryPolicy(max_retries=0),
    ) as plane:
        chat = plane.chat_model("summarise", org="acme", domain="acme-eu", context="support")
        calls: list[Callable[[], str]] = [
            lambda: str(chat.invoke(PROMPT).content),
            lambda: "".join(str(chunk.content) for chunk in chat.stream(PROMPT)),
        ]
        return [call() for call in (reversed(calls) if reverse else calls)]


def usage_rows(db_file: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db_file), read_only=True)
    try:
        return sorted(con.execute(f"select {USAGE_COLUMNS} from llm_usage").fetchall(), key=str)
    finally:
        con.close()


def test_an_openai_recording_replays_without_server_or_key_to_identical_usage_rows(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cassettes" / "openai.yaml"
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("OPENAI_ORG_ID", OPENAI_ORG)
    monkeypatch.setenv("OPENAI_PROJECT_ID", OPENAI_PROJECT)
    with FakeOpenAIServer() as server:
        server.behave(
            "gpt-5",
            ModelBehaviour(
                content=echo,
                prompt_tokens=1_500,
                completion_tokens=340,
                cached_tokens=1_024,
                reasoning_tokens=300,
            ),
        )
        with cassette(path) as recording:
            assert not recording.replaying
            recorded = run_calls(server.base_url, "openai", "gpt-5", data_dir / "recorded.duckdb")
        base_url = server.base_url
        sent = server.headers
    assert recorded == [f"buffered answer to {PROMPT}", f"streamed answer to {PROMPT}"]
    # The secrets were on the wire, and are not in the file.
    assert [h["authorization"] for h in sent] == [f"Bearer {OPENAI_SECRET}"] * 2
    assert [h["openai-organization"] for h in sent] == [OPENAI_ORG] * 2
    text = path.read_text()
    for secret in (OPENAI_SECRET, OPENAI_ORG, OPENAI_PROJECT):
        assert secret not in text
    assert "authorization" not in text.lower()

    no_provider_keys(monkeypatch)  # and the server is gone
    with cassette(path, mode="replay") as replay:
        assert replay.replaying
        replayed = run_calls(
            base_url, "openai", "gpt-5", data_dir / "replayed.duckdb", reverse=True
        )
        assert replay.play_count == 2

    assert replayed == list(reversed(recorded))  # matched on the body, not on the order
    rows = usage_rows(data_dir / "recorded.duckdb")
    assert len(rows) == 2
    assert {row[4:9] for row in rows} == {(1_500, 340, 1_024, 0, 300)}
    assert all(row[9] > 0 and row[12] == "ok" for row in rows)
    assert usage_rows(data_dir / "replayed.duckdb") == rows


def test_an_anthropic_recording_replays_with_its_key_filtered(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "anthropic.yaml"
    model = "claude-sonnet-4-5"
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
    with FakeAnthropicServer() as server:
        server.behave(
            model,
            AnthropicBehaviour(
                content=echo,
                input_tokens=120,
                output_tokens=30,
                cache_read_tokens=2_000,
                cache_write_5m_tokens=700,
                cache_write_1h_tokens=400,
            ),
        )
        with cassette(path):
            recorded = run_calls(server.base_url, "anthropic", model, data_dir / "rec.duckdb")
        base_url = server.base_url
        sent = server.headers
    # The SDK sends the key as `x-api-key` or, in recent versions, as a bearer token.
    assert all(
        ANTHROPIC_SECRET in (h.get("x-api-key"), h.get("authorization"))
        or h.get("authorization") == f"Bearer {ANTHROPIC_SECRET}"
        for h in sent
    )
    assert len(sent) == 2
    text = path.read_text()
    assert ANTHROPIC_SECRET not in text
    assert "x-api-key" not in text.lower()
    assert "authorization" not in text.lower()

    no_provider_keys(monkeypatch)
    with cassette(path, mode="replay"):
        replayed = run_calls(base_url, "anthropic", model, data_dir / "rep.duckdb")

    assert replayed == recorded
    rows = usage_rows(data_dir / "rec.duckdb")
    # Anthropic's input excludes the cache; the row's input tokens include it.
    assert {row[4:9] for row in rows} == {(3_220, 30, 2_000, 1_100, 0)}
    assert all(row[9] > 0 and row[12] == "ok" for row in rows)
    assert usage_rows(data_dir / "rep.duckdb") == rows


def test_a_gemini_recording_replays_with_its_key_filtered(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gemini_echo(request: Mapping[str, Any]) -> str:
        text = " ".join(part["text"] for part in request["contents"][-1]["parts"])
        return f"answer to {text}"

    path = tmp_path / "gemini.yaml"
    model = "gemini-2.5-flash"
    no_provider_keys(monkeypatch)
    monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE_SECRET)
    with FakeGeminiServer() as server:
        server.behave(
            model,
            GeminiBehaviour(
                content=gemini_echo,
                prompt_tokens=900,
                candidates_tokens=40,
                cached_tokens=512,
                thoughts_tokens=200,
            ),
        )
        with cassette(path):
            recorded = run_calls(server.base_url, "gcp.gemini", model, data_dir / "rec.duckdb")
        base_url = server.base_url
        sent = server.headers
    assert [h.get("x-goog-api-key") for h in sent] == [GOOGLE_SECRET] * 2
    assert GOOGLE_SECRET not in path.read_text()

    no_provider_keys(monkeypatch)
    with cassette(path, mode="replay") as replay:
        replayed = run_calls(base_url, "gcp.gemini", model, data_dir / "rep.duckdb")
        assert replay.play_count == 2

    assert replayed == recorded == [f"answer to {PROMPT}"] * 2
    rows = usage_rows(data_dir / "rec.duckdb")
    assert {row[4:9] for row in rows} == {(900, 240, 512, 0, 200)}
    assert all(row[9] > 0 and row[12] == "ok" for row in rows)
    assert usage_rows(data_dir / "rep.duckdb") == rows


def test_replay_builds_a_public_endpoint_model_with_no_key_and_leaves_the_environment_alone(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "public.yaml"
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    with FakeOpenAIServer() as server:
        server.behave("gpt-4o-mini", ModelBehaviour(content=echo))
        with cassette(path):
            recorded = run_calls(server.base_url, "openai", "gpt-4o-mini", data_dir / "a.duckdb")
        # As if recorded against OpenAI itself: the profile then has no base_url.
        path.write_text(path.read_text().replace(server.base_url, "https://api.openai.com/v1"))
    no_provider_keys(monkeypatch)
    monkeypatch.setenv("GEMINI_API_KEY", "a-gemini-key-of-the-developer")
    before = dict(os.environ)

    with pytest.raises(UsageError, match="set OPENAI_API_KEY"):  # what replay has to get past
        run_calls(None, "openai", "gpt-4o-mini", data_dir / "b.duckdb")
    with cassette(path):
        assert dict(os.environ) == before  # a subprocess or another thread sees no placeholder
        replayed = run_calls(None, "openai", "gpt-4o-mini", data_dir / "c.duckdb")

    assert replayed == recorded
    assert dict(os.environ) == before
    assert usage_rows(data_dir / "c.duckdb") == usage_rows(data_dir / "a.duckdb")
    with pytest.raises(UsageError, match="set OPENAI_API_KEY"):  # and only while it replays
        run_calls(None, "openai", "gpt-4o-mini", data_dir / "d.duckdb")


@pytest.mark.parametrize(
    ("provider", "model", "variable", "field"),
    [
        ("openai", "gpt-4o-mini", "OPENAI_API_KEY", "openai_api_key"),
        ("anthropic", "claude-sonnet-4-5", "ANTHROPIC_API_KEY", "anthropic_api_key"),
        ("gcp.gemini", "gemini-2.5-flash", "GOOGLE_API_KEY", "google_api_key"),
    ],
)
def test_a_public_endpoint_of_each_provider_builds_keyless_only_while_replaying(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    model: str,
    variable: str,
    field: str,
) -> None:
    from comptroller.control._providers import NO_CREDENTIAL, ModelSpec, ProviderRegistry

    no_provider_keys(monkeypatch)
    spec = ModelSpec(provider=provider, model=model)
    registry = ProviderRegistry()
    with pytest.raises(UsageError, match=f"set {variable}"):
        registry.build(spec)
    path = tmp_path / "empty.yaml"
    path.write_text("interactions: []\nversion: 1\n")
    with cassette(path, mode="replay"):
        built = registry.build(spec)
        assert variable not in os.environ
    assert getattr(built, field).get_secret_value() == NO_CREDENTIAL
    with pytest.raises(UsageError, match=f"set {variable}"):
        registry.build(spec)


MISSABLE = {
    "openai": (FakeOpenAIServer, "gpt-4o-mini", "/chat/completions"),
    "anthropic": (FakeAnthropicServer, "claude-sonnet-4-5", "/v1/messages"),
    "gcp.gemini": (
        FakeGeminiServer,
        "gemini-2.5-flash",
        "/v1/models/gemini-2.5-flash:generateContent",
    ),
}


@pytest.mark.parametrize("provider", list(MISSABLE))
def test_a_request_missing_from_the_cassette_fails_naming_it_and_the_file(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    server_class, model, endpoint = MISSABLE[provider]
    path = tmp_path / "missing.yaml"
    no_provider_keys(monkeypatch)
    server: Any
    with server_class() as server:
        with cassette(path):
            run_calls(server.base_url, provider, model, data_dir / "a.duckdb")
        base_url = server.base_url

    settings = load_settings(None, telemetry="none")
    profile = ResolvedProfile(
        purpose="summarise", model=ModelRef(provider=provider, model=model), base_url=base_url
    )
    # The miss is raised as the cassette closes, chained to what the call raised inside
    # (vcrpy's error as is for OpenAI; Anthropic's SDK wraps it into a connection error).
    with (
        pytest.raises(CassetteMiss) as caught,
        cassette(path),
        ControlPlane(
            settings,
            resolver=StaticProfiles({"summarise": profile}),
            retry_policy=RetryPolicy(max_retries=0),
        ) as plane,
    ):
        plane.chat_model("summarise").invoke("A prompt never recorded")

    message = str(caught.value)
    assert f"POST {base_url}{endpoint} (" in message
    assert str(path) in message
    assert "differs in: body" in message
    assert "mode='record'" in message
    assert caught.value.requests == [f"POST {base_url}{endpoint}"]
    assert caught.value.__cause__ is not None


def test_record_mode_replaces_the_cassette_and_replay_mode_needs_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rerecorded.yaml"
    no_provider_keys(monkeypatch)
    with pytest.raises(UsageError, match="does not exist"), cassette(path, mode="replay"):
        pass

    def ask(base_url: str) -> str:
        return str(
            httpx.post(
                f"{base_url}/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": "Bearer x"},
            ).json()["choices"][0]["message"]["content"]
        )

    with FakeOpenAIServer() as server:
        server.behave("m", ModelBehaviour(content="first"))
        with cassette(path):
            assert ask(server.base_url) == "first"
        server.behave("m", ModelBehaviour(content="second"))
        with cassette(path):  # once: the file exists, so it replays
            assert ask(server.base_url) == "first"
        with cassette(path, mode="record") as recording:
            assert not recording.replaying
            assert ask(server.base_url) == "second"
        base_url = server.base_url
    with cassette(path, mode="replay") as replay:
        assert replay.recorded_count == 1
        assert ask(base_url) == "second"


class _AccountServer:
    """A stdlib HTTP server answering like a provider that names the account in its
    response headers, and counting what reaches it."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                paths.append(self.path)
                self.rfile.read(int(self.headers.get("content-length") or 0))
                answer: dict[str, Any] = {"answer": 42}
                echo = self.headers.get("x-echo")
                if echo is not None:  # as an error body naming the key it was sent
                    answer["error"] = f"Incorrect API key provided: {echo}"
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if echo is not None:
                    self.send_header("x-echoed", echo)
                self.send_header("openai-organization", "org-ACCOUNT-in-response")
                self.send_header("set-cookie", "session=COOKIE-in-response; Path=/")
                self.send_header("x-request-id", "req_kept_123")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _AccountServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def account_server() -> Iterator[_AccountServer]:
    with _AccountServer() as running:
        yield running


def test_keys_cookies_and_account_headers_stay_out_of_the_file(
    tmp_path: Path, account_server: _AccountServer
) -> None:
    path = tmp_path / "scrubbed.yaml"
    headers = {
        "x-goog-api-key": "goog-HEADER-secret",
        "x-api-key": "sk-ant-HEADER-secret",
        "api-key": "azure-HEADER-secret",
        "cookie": "session=COOKIE-in-request",
        "openai-project": "proj_HEADER-secret",
    }
    url = f"{account_server.url}/v1beta/models/gemini:generateContent"
    with cassette(path):
        recorded = httpx.post(url, params={"key": "QUERY-secret"}, json={"q": 1}, headers=headers)
    text = path.read_text()
    for secret in ("HEADER-secret", "COOKIE-in-request", "QUERY-secret"):
        assert secret not in text
    assert "org-ACCOUNT-in-response" not in text
    assert "COOKIE-in-response" not in text
    assert "req_kept_123" in text

    # Replayed with another key in the query: the query is not matched.
    with cassette(path, mode="replay"):
        replayed = httpx.post(url, params={"key": "another"}, json={"q": 1})
    assert replayed.json() == recorded.json() == {"answer": 42}
    assert replayed.headers["x-request-id"] == "req_kept_123"
    assert account_server.paths == ["/v1beta/models/gemini:generateContent?key=QUERY-secret"]


def test_telemetry_exports_pass_through_a_replay_unrecorded(
    tmp_path: Path, account_server: _AccountServer
) -> None:
    path = tmp_path / "otlp.yaml"
    with cassette(path):
        httpx.post(f"{account_server.url}/v1/chat/completions", json={"q": 1})
    protobuf = {"content-type": "application/x-protobuf"}
    with cassette(path, mode="replay"):
        httpx.post(f"{account_server.url}/v1/chat/completions", json={"q": 1})
        httpx.post(f"{account_server.url}/v1/logs", content=b"\x0a\x00", headers=protobuf)
    assert account_server.paths == ["/v1/chat/completions", "/v1/logs"]
    assert "/v1/logs" not in path.read_text()


def test_as_a_decorator_of_sync_and_async_functions_each_call_is_a_fresh_cassette(
    tmp_path: Path, account_server: _AccountServer
) -> None:
    import asyncio

    @cassette(tmp_path / "sync.yaml")
    def sync_call() -> Any:
        return httpx.post(f"{account_server.url}/v1/a", json={"q": 1}).json()

    @cassette(tmp_path / "async.yaml")
    async def async_call() -> Any:
        async with httpx.AsyncClient() as client:
            return (await client.post(f"{account_server.url}/v1/b", json={"q": 2})).json()

    assert sync_call() == sync_call() == {"answer": 42}
    assert asyncio.run(async_call()) == asyncio.run(async_call()) == {"answer": 42}
    assert account_server.paths == ["/v1/a", "/v1/b"]  # the second calls replayed
    assert sync_call.__name__ == "sync_call"


def test_without_vcrpy_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vcr", None)
    with pytest.raises(ConfigError, match=r"pip install 'comptroller\[cassettes\]'"):
        cassette(tmp_path / "x.yaml")


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="'once', 'replay', 'record'"):
        cassette(tmp_path / "x.yaml", mode="new_episodes")  # type: ignore[arg-type]


def test_a_miss_the_code_under_test_swallowed_still_fails_the_block(
    tmp_path: Path, account_server: _AccountServer
) -> None:
    path = tmp_path / "swallowed.yaml"
    url = f"{account_server.url}/v1/chat/completions"
    with cassette(path):
        httpx.post(url, json={"q": 1})

    def ask_twice() -> None:
        with cassette(path, mode="replay"):
            httpx.post(url, json={"q": 1})
            # A fallback, say, swallows the second one: the replay has left the recording.
            with contextlib.suppress(Exception):
                httpx.post(url, json={"q": 1})

    with pytest.raises(CassetteMiss, match="recorded fewer times than requested") as caught:
        ask_twice()
    assert caught.value.requests == [f"POST {url}"]
    assert account_server.paths == ["/v1/chat/completions"]


def test_gateway_headers_and_query_keys_are_filtered_by_their_name(
    tmp_path: Path, account_server: _AccountServer
) -> None:
    path = tmp_path / "gateway.yaml"
    headers = {
        "Proxy-Authorization": "Basic PROXY-secret-0001",
        "cf-aig-authorization": "Bearer GATEWAY-secret-0002",
        "X-Portkey-Api-Key": "PORTKEY-secret-0003",
        "helicone-auth": "Bearer HELICONE-secret-0004",
        "x-request-label": "kept-label",
    }
    params = {
        "api_key": "QUERY-secret-0005",
        "access_token": "QUERY-secret-0006",
        "Key": "QUERY-secret-0007",
        "alt": "sse",
    }
    url = f"{account_server.url}/v1/chat/completions"
    with cassette(path):
        httpx.post(url, params=params, json={"q": 1}, headers=headers)
    text = path.read_text()
    assert "-secret-000" not in text
    assert "kept-label" in text
    assert f"uri: {url}?alt=sse" in text
    with cassette(path, mode="replay"):
        replayed = httpx.post(url, params={"alt": "sse"}, json={"q": 1})
    assert replayed.json() == {"answer": 42}
    assert len(account_server.paths) == 1


def test_a_key_echoed_in_an_answer_is_replaced_wherever_it_shows(
    tmp_path: Path, account_server: _AccountServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "echoed.yaml"
    bearer = "sk-proj-ECHOED-bearer-4c1d"
    in_environment = "gw-ECHOED-from-environment-77aa"
    monkeypatch.setenv("ACME_GATEWAY_API_KEY", in_environment)
    url = f"{account_server.url}/v1/chat/completions"
    with cassette(path):
        sent = httpx.post(
            url, json={"q": 1}, headers={"authorization": f"Bearer {bearer}", "x-echo": bearer}
        )
        httpx.post(url, json={"q": 2}, headers={"x-echo": in_environment})
    assert sent.json()["error"] == f"Incorrect API key provided: {bearer}"  # the live answer
    text = path.read_text()
    assert "ECHOED" not in text
    assert "Incorrect API key provided: FILTERED" in text

    monkeypatch.delenv("ACME_GATEWAY_API_KEY")
    with cassette(path, mode="replay"):
        replayed = httpx.post(url, json={"q": 1})
    assert replayed.json() == {"answer": 42, "error": "Incorrect API key provided: FILTERED"}
    assert replayed.headers["x-echoed"] == "FILTERED"


def test_oauth_token_requests_are_never_recorded_and_reach_the_endpoint_in_a_replay(
    tmp_path: Path, account_server: _AccountServer
) -> None:
    """A refreshable credential renewed while recording (`grant_type=refresh_token` to its
    token endpoint) would write its refresh token, client secret and new tokens."""
    path = tmp_path / "oauth.yaml"
    url = f"{account_server.url}/v1/chat/completions"
    with FakeTokenServer(client_secret="client-SECRET-of-the-app") as tokens:
        bundle = json.loads(tokens.bundle())

        def refresh() -> str:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": tokens.grants[-1]["refresh_token"]
                if tokens.grants
                else bundle["refresh_token"],
                "client_id": bundle["client_id"],
                "client_secret": bundle["client_secret"],
            }
            answer = httpx.post(tokens.url, data=form).json()
            return str(answer["access_token"])

        with cassette(path):
            access = refresh()
            httpx.post(url, json={"q": 1}, headers={"authorization": f"Bearer {access}"})
        text = path.read_text()
        assert len(tokens.grants) == 1
        for secret in (bundle["refresh_token"], access, "client-SECRET-of-the-app"):
            assert secret not in text
        assert "grant_type" not in text
        assert "/token" not in text

        with cassette(path, mode="replay") as replay:
            httpx.post(url, json={"q": 1})
            assert replay.play_count == 1
            # Not in the cassette, so not a miss: it goes to the endpoint.
            tokens.fail(400, "invalid_grant")
            assert httpx.post(tokens.url, data={"grant_type": "refresh_token"}).status_code == 400
        assert len(tokens.grants) == 2
    assert len(account_server.paths) == 1


def test_record_mode_with_no_request_leaves_no_stale_recording(
    tmp_path: Path, account_server: _AccountServer
) -> None:
    path = tmp_path / "stale.yaml"
    url = f"{account_server.url}/v1/chat/completions"
    with cassette(path):
        httpx.post(url, json={"q": 1})
    assert path.is_file()
    with cassette(path, mode="record"):
        pass  # the code under test no longer calls the provider
    assert not path.exists()

    def fails_after_a_call() -> None:
        with cassette(path, mode="record"):
            httpx.post(url, json={"q": 1})
            raise RuntimeError("a failed block writes nothing")

    with pytest.raises(RuntimeError):
        fails_after_a_call()
    assert not path.exists()


REPLAY_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_cassettes import run_calls, usage_rows
from comptroller.control.testing import cassette

cassette_file, base_url, db_file = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
with cassette(cassette_file, mode="replay"):
    answers = run_calls(base_url, "anthropic", "claude-sonnet-4-5", db_file)
print(json.dumps(answers))
"""


def test_a_fresh_process_with_no_key_anywhere_replays_to_the_same_usage_rows(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What CI does: another process, no provider, no key in the environment, none in the
    profile store (its data directory is empty)."""
    path = tmp_path / "ci.yaml"
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
    with FakeAnthropicServer() as server:
        server.behave(
            "claude-sonnet-4-5",
            AnthropicBehaviour(
                content=echo, input_tokens=64, output_tokens=8, cache_read_tokens=32
            ),
        )
        with cassette(path):
            recorded = run_calls(
                server.base_url, "anthropic", "claude-sonnet-4-5", data_dir / "r.db"
            )
        base_url = server.base_url
    assert ANTHROPIC_SECRET not in path.read_text()

    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.endswith(("_API_KEY", "_ORG_ID", "_PROJECT_ID"))
    }
    environment["COMPTROLLER_DATA_DIR"] = str(tmp_path / "ci-data")
    replay_db = tmp_path / "ci-data" / "replayed.duckdb"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            REPLAY_SCRIPT,
            str(Path(__file__).parent),
            str(path),
            base_url,
            str(replay_db),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == recorded
    assert usage_rows(replay_db) == usage_rows(data_dir / "r.db")
