"""Issue 17 in combination, as a user meets it: OAuth credentials on Anthropic and Gemini
profiles, embeddings with stored and OAuth credentials, pydantic-ai under budgets by
attribution, one cassette holding every kind of call, a cross-provider chain with keys from
the profile store, and budget reservation for every provider.

Real parts only: the local fake provider servers and token endpoint (the real SDKs over
HTTP), a SQLite profile store, DuckDB ledgers, the `comptroller` CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic_ai import Agent
from pydantic_ai.settings import ModelSettings
from test_profiles_kit import GLOBAL, PLATFORM, bind, make_settings, spec

from comptroller import semconv
from comptroller.cli import main
from comptroller.config import load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    BudgetUnverifiable,
    CallDefaults,
    CircuitPolicy,
    ControlPlane,
    GuardKey,
    MemoryGuard,
    ModelRef,
    ProviderError,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
    attribution,
)
from comptroller.control._providers import BearerToken, ModelSpec, google_chat_model
from comptroller.control.profiles import (
    ENV_MASTER_KEY,
    InMemoryProfileEvents,
    ProfileService,
    generate_master_key,
)
from comptroller.control.testing import (
    AnthropicBehaviour,
    AnthropicReply,
    FakeAnthropicServer,
    FakeClock,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeTokenServer,
    GeminiBehaviour,
    GeminiReply,
    InMemorySink,
    ServerReply,
    cassette,
)

MARGIN_S = 60.0
CLAUDE = "claude-sonnet-4-5"
FLASH = "gemini-2.5-flash"
GPT = "gpt-4o-mini"
EMBEDDER = "text-embedding-3-small"


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


@pytest.fixture
def service(data_dir: Path, master_key: str, clock: FakeClock) -> Iterator[ProfileService]:
    """A SQLite profile store where OAuth credentials are allowed, on the test's clock."""
    settings = make_settings(
        data_dir, allow_oauth_credentials=True, oauth_refresh_margin_s=MARGIN_S
    )
    service = ProfileService.from_settings(
        settings,
        url=f"sqlite:///{data_dir / 'profiles.sqlite'}",
        events=InMemoryProfileEvents(),
        environ={ENV_MASTER_KEY: master_key},
        clock=clock.monotonic,
        wall_clock=clock,
    )
    bind(service)
    yield service
    service.close()


# -- 1. OAuth credentials on Anthropic and Gemini ---------------------------------------------

PROVIDERS = {
    # provider of the profile, model, the header each SDK sends its secret in, a 401 reply
    "anthropic": (CLAUDE, "x-api-key", AnthropicReply.server_error(401)),
    "google": (FLASH, "x-goog-api-key", GeminiReply.server_error(401)),
}


def fake_server(provider: str) -> FakeAnthropicServer | FakeGeminiServer:
    return FakeAnthropicServer() if provider == "anthropic" else FakeGeminiServer()


def sent_secret(headers: dict[str, str]) -> str | None:
    """The secret a request carried, whichever header its SDK put it in."""
    for name in ("x-api-key", "x-goog-api-key"):
        if name in headers:
            return headers[name]
    auth = headers.get("authorization", "")
    return auth.removeprefix("Bearer ") if auth else None


def call(model: Any, how: str, text: str) -> str:
    if how == "ainvoke":
        return str(asyncio.run(model.ainvoke(text)).content)
    if how == "stream":
        return "".join(str(chunk.content) for chunk in model.stream(text))
    if how == "astream":

        async def collect() -> str:
            return "".join([str(chunk.content) async for chunk in model.astream(text)])

        return asyncio.run(collect())
    if how == "agent":
        return str(Agent(model).run_sync(text).output)
    return str(model.invoke(text).content)


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream", "astream", "agent"])
@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.usefixtures("sync_loop")
def test_an_oauth_token_is_renewed_before_expiry_and_after_a_401_for_each_provider(
    service: ProfileService,
    data_dir: Path,
    tokens: FakeTokenServer,
    clock: FakeClock,
    provider: str,
    how: str,
) -> None:
    model_name, _, unauthorized = PROVIDERS[provider]
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    with fake_server(provider) as server:
        service.credentials.set(
            GLOBAL,
            provider,
            tokens.bundle(expires_at=clock.time() + 3600),
            actor=PLATFORM,
            kind="oauth",
        )
        service.set_profile(
            GLOBAL,
            "reasoning",
            spec(model=f"{provider}:{model_name}", base_url=server.base_url),
            actor=PLATFORM,
        )
        with ControlPlane(settings, resolver=service) as plane:
            if how == "agent":
                model = plane.pydantic_ai_model("reasoning", org="acme", context="ci")
            else:
                model = plane.chat_model("reasoning", org="acme", context="ci")
            assert call(model, how, "first")
            clock.advance(3600 - MARGIN_S + 1)  # within the margin: renewed before the call
            assert call(model, how, "second")
            server.script(model_name, unauthorized)  # revoked early: renew, same model again
            assert call(model, how, "third")
            server.script(model_name, unauthorized, unauthorized)
            with pytest.raises(ProviderError) as caught:
                call(model, how, "a second 401 is the provider's answer")
            assert caught.value.status == 401
        secrets = [sent_secret(headers) for headers in server.headers]
    t1, t2, t3, t4 = tokens.issued
    assert secrets == [t1, t2, t2, t3, t3, t4]
    assert len(tokens.grants) == 3


@pytest.mark.parametrize("provider", ["anthropic", "google"])
def test_an_oauth_token_is_sent_as_a_bearer_token_not_as_an_api_key(
    service: ProfileService,
    data_dir: Path,
    tokens: FakeTokenServer,
    provider: str,
) -> None:
    model_name, key_header, _ = PROVIDERS[provider]
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    with fake_server(provider) as server:
        service.credentials.set(GLOBAL, provider, tokens.bundle(), actor=PLATFORM, kind="oauth")
        service.set_profile(
            GLOBAL,
            "reasoning",
            spec(model=f"{provider}:{model_name}", base_url=server.base_url),
            actor=PLATFORM,
        )
        with ControlPlane(settings, resolver=service) as plane:
            plane.chat_model("reasoning", org="acme", context="ci").invoke("hi")
        (headers,) = server.headers
    assert headers.get("authorization") == f"Bearer {tokens.issued[0]}"
    assert tokens.issued[0] not in headers.get(key_header, "")


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream", "astream"])
def test_a_bearer_token_reaches_the_gemini_api_as_authorization_not_as_an_api_key(
    how: str,
) -> None:
    with FakeGeminiServer() as server:
        for secret in (BearerToken("ya29.an-oauth-access-token"), "AIza-an-api-key"):
            model = google_chat_model(
                ModelSpec(
                    provider="gcp.gemini", model=FLASH, base_url=server.base_url, api_key=secret
                )
            )
            assert call(model, how, "hi")
        bearer, keyed = server.headers
    assert bearer.get("authorization") == "Bearer ya29.an-oauth-access-token"
    assert "x-goog-api-key" not in bearer
    assert keyed.get("x-goog-api-key") == "AIza-an-api-key"
    assert "authorization" not in keyed


# -- 2. Embeddings with an OAuth credential and with a stored key ------------------------------


def set_embedding_profile(service: ProfileService, server: FakeOpenAIServer) -> None:
    service.set_profile(
        GLOBAL,
        "embedding",
        spec(model=f"openai:{EMBEDDER}", base_url=server.base_url),
        actor=PLATFORM,
    )


def test_embeddings_renew_an_oauth_token_before_expiry_and_after_a_401(
    service: ProfileService, data_dir: Path, tokens: FakeTokenServer, clock: FakeClock
) -> None:
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    with FakeOpenAIServer() as server:
        service.credentials.set(
            GLOBAL,
            "openai",
            tokens.bundle(expires_at=clock.time() + 3600),
            actor=PLATFORM,
            kind="oauth",
        )
        set_embedding_profile(service, server)
        with ControlPlane(settings, resolver=service) as plane:
            emb = plane.embeddings("embedding", org="acme", context="search")
            assert len(emb.embed_documents(["a", "b"])) == 2
            clock.advance(3600 - MARGIN_S + 1)
            assert emb.embed_query("renewed before the call")
            server.script(EMBEDDER, ServerReply.server_error(401))
            assert asyncio.run(emb.aembed_query("revoked early"))
        auth = [headers.get("authorization") for headers in server.headers]
    t1, t2, t3 = tokens.issued
    assert auth == [f"Bearer {t1}", f"Bearer {t2}", f"Bearer {t2}", f"Bearer {t3}"]


def test_embeddings_use_a_key_from_the_profile_store_not_the_environment(
    service: ProfileService, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    sink = InMemorySink()
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    with FakeOpenAIServer() as server:
        service.credentials.set(GLOBAL, "openai", "sk-stored-embedding-key", actor=PLATFORM)
        set_embedding_profile(service, server)
        with ControlPlane(settings, resolver=service, sink=sink) as plane:
            plane.embeddings("embedding", org="acme").embed_documents(["a"])
            assert plane.flush()
        (headers,) = server.headers
    assert headers["authorization"] == "Bearer sk-stored-embedding-key"
    (row,) = sink.usage_rows()
    assert row[semconv.GEN_AI_OPERATION_NAME] == semconv.OPERATION_EMBEDDINGS
    assert "sk-stored" not in json.dumps(row, default=str)


# -- 3. pydantic-ai under budgets by attribution -------------------------------------------------


@pytest.fixture
def sync_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """pydantic-ai's `run_sync` leaves its loop as the thread's current one: the test owns it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def static_plane(
    profile: ResolvedProfile,
    *,
    budgets: list[dict[str, Any]] | None = None,
    sink: InMemorySink | None = None,
) -> ControlPlane:
    clock = FakeClock()
    settings = load_settings(telemetry="none", control={"attribution_budgets": budgets or []})
    return ControlPlane(
        settings,
        resolver=StaticProfiles({profile.purpose: profile}),
        guard=MemoryGuard(clock=clock),
        sink=sink if sink is not None else InMemorySink(),
        clock=clock,
        retry_policy=RetryPolicy(max_retries=0),
    )


ANSWER = AnthropicBehaviour(content="ok", input_tokens=1000, output_tokens=100)


@pytest.mark.usefixtures("sync_loop")
def test_a_pydantic_ai_agent_under_a_per_user_cap_refuses_only_that_user() -> None:
    with FakeAnthropicServer(ANSWER) as server:
        profile = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider="anthropic", model=CLAUDE),
            base_url=server.base_url,
            defaults=CallDefaults(max_tokens=100),
        )
        sink = InMemorySink()
        with static_plane(profile, sink=sink) as plane:
            Agent(plane.pydantic_ai_model("reasoning", domain="acme-eu")).run_sync("q")
            assert plane.flush()
        one_call = Decimal(sink.usage_rows()[0][semconv.COST_USD])

        sink = InMemorySink()
        budgets = [{"by": "user", "daily_usd": str(one_call * 5), "tenant": "acme-eu"}]
        with static_plane(profile, budgets=budgets, sink=sink) as plane:
            agent = Agent(plane.pydantic_ai_model("reasoning", org="acme", domain="acme-eu"))
            done = 0
            with attribution(user="alice"):
                while True:
                    try:
                        agent.run_sync("q")
                    except BudgetExceeded as exc:
                        refused = exc
                        break
                    done += 1
                    assert done < 50, "the per-user cap never refused alice"
            before = server.request_count()
            with attribution(user="bob"):
                assert agent.run_sync("q").output == "ok"
            agent.run_sync("q")  # no user: not counted by the per-user budget
            assert plane.flush()
    assert 3 <= done <= 5
    assert refused.key.attribute == "user=alice"
    assert server.request_count() == before + 2  # alice's refused run sent nothing
    rows = sink.usage_rows()
    users = [row.get(semconv.USER_ID) for row in rows]
    assert users == ["alice"] * done + ["bob", None]
    rejected = sink.events(semconv.EVENT_BUDGET_REJECTED)
    assert [e[semconv.BUDGET_ATTRIBUTE] for e in rejected] == ["user=alice"]


# -- 5. A cross-provider chain with every key from the profile store ----------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_a_cross_provider_chain_lands_on_openai_with_keys_from_the_store(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "ledger.duckdb"
    keys = {"anthropic": "sk-ant-stored", "gcp.gemini": "AIza-stored", "openai": "sk-oai-stored"}
    with (
        FakeAnthropicServer() as claude,
        FakeGeminiServer() as gemini,
        FakeOpenAIServer() as gpt,
    ):
        run_cli(capsys, "admin", "init")
        for provider, key in keys.items():
            monkeypatch.setenv("KEY_TO_STORE", key)
            run_cli(
                capsys,
                "credentials",
                "set",
                "--provider",
                provider,
                "--global",
                "--from-env",
                "KEY_TO_STORE",
            )
        run_cli(
            capsys,
            "profiles",
            "set",
            "reasoning",
            "--global",
            "--model",
            f"anthropic:{CLAUDE}@{claude.base_url}",
            "--fallback",
            f"gcp.gemini:{FLASH}@{gemini.base_url}",
            "--fallback",
            f"openai:{GPT}@{gpt.base_url}",
            "--cross-provider",
        )
        claude.script(CLAUDE, AnthropicReply.overloaded())
        gemini.script(FLASH, GeminiReply.server_error(503))
        settings = load_settings(None, data_dir=data_dir, db=db, telemetry="embedded")
        service = ProfileService.from_settings(settings)
        try:
            with ControlPlane(
                settings,
                resolver=service,
                retry_policy=RetryPolicy(max_retries=0),
                circuit_policy=CircuitPolicy(consecutive_failures=1),
            ) as plane:
                answer = plane.chat_model("reasoning", org="acme", context="ci").invoke("q")
                assert answer.content
                assert plane.flush()
        finally:
            service.close()
        sent = {
            "anthropic": sent_secret(claude.headers[0]),
            "gcp.gemini": sent_secret(gemini.headers[0]),
            "openai": sent_secret(gpt.headers[0]),
        }
    assert sent == keys

    rows = json.loads(
        run_cli(
            capsys,
            "sql",
            "--db",
            str(db),
            "-f",
            "json",
            "select provider, request_model, fallback_depth, outcome, error_type "
            "from llm_usage order by fallback_depth",
        )
    )
    assert [(r["provider"], r["request_model"], r["fallback_depth"]) for r in rows] == [
        ("anthropic", CLAUDE, 0),
        ("gcp.gemini", FLASH, 1),
        ("openai", GPT, 2),
    ]
    assert [r["error_type"] for r in rows] == ["529", "503", None]
    circuits = json.loads(
        run_cli(
            capsys,
            "sql",
            "--db",
            str(db),
            "-f",
            "json",
            "select provider, model, state from circuit_events order by provider",
        )
    )
    assert [(c["provider"], c["model"], c["state"]) for c in circuits] == [
        ("anthropic", CLAUDE, "opened"),
        ("gcp.gemini", FLASH, "opened"),
    ]


# -- 6. Budget reservation for every provider ---------------------------------------------------

KINDS = ["anthropic", "gemini", "embeddings", "pydantic-ai"]


def budget_call(kind: str, model: str, budget_usd: str, max_tokens: int) -> tuple[Any, int]:
    """Run one call of `kind` under a daily cap; returns what it raised and the requests the
    server received."""
    server: Any
    if kind == "anthropic" or kind == "pydantic-ai":
        server, provider = FakeAnthropicServer(), "anthropic"
    elif kind == "gemini":
        server, provider = FakeGeminiServer(), "gcp.gemini"
    else:
        server, provider = FakeOpenAIServer(), "openai"
    purpose = "embedding" if kind == "embeddings" else "reasoning"
    with server:
        profile = ResolvedProfile(
            purpose=purpose,
            model=ModelRef(provider=provider, model=model),
            base_url=server.base_url,
            budget=BudgetSpec(daily_usd=Decimal(budget_usd)),
            defaults=CallDefaults(max_tokens=max_tokens),
        )
        raised: Any = None
        with static_plane(profile) as plane:
            try:
                if kind == "embeddings":
                    plane.embeddings(purpose, domain="acme-eu").embed_documents(["x" * 4000])
                elif kind == "pydantic-ai":
                    agent = Agent(plane.pydantic_ai_model(purpose, domain="acme-eu"))
                    asyncio.run(agent.run("q"))
                else:
                    plane.chat_model(purpose, domain="acme-eu").invoke("q")
            except Exception as exc:
                raised = exc
        return raised, server.request_count()


PRICED = {
    "anthropic": CLAUDE,
    "gemini": FLASH,
    "embeddings": EMBEDDER,
    "pydantic-ai": CLAUDE,
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_cap_below_one_calls_worst_case_refuses_before_the_request(kind: str) -> None:
    # 100,000 output tokens (or 4,000 input tokens of embeddings) cost more than a cent.
    raised, requests = budget_call(kind, PRICED[kind], "0.00001", 100_000)
    assert isinstance(raised, BudgetExceeded), raised
    assert requests == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_cap_admits_a_call_whose_worst_case_fits(kind: str) -> None:
    raised, requests = budget_call(kind, PRICED[kind], "10", 100)
    assert raised is None
    assert requests >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_with_no_price_fails_closed_under_a_budget(kind: str) -> None:
    raised, requests = budget_call(kind, "no-such-priced-model-x", "10", 100)
    assert isinstance(raised, BudgetUnverifiable), raised
    assert requests == 0


# -- 4. One cassette for every kind of call, replayed in a fresh process with no key -----------

HAIKU = "claude-haiku-4-5"
USAGE_COLUMNS = (
    "provider, operation, request_model, response_model, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, price_source, "
    "estimated, outcome, error_type, attempt, fallback_depth, tenant, org, context, purpose, "
    "user_id"
)
PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY")
SECRETS = {
    "OPENAI_API_KEY": "sk-test-COMBO-openai-s3cret",
    "ANTHROPIC_API_KEY": "sk-ant-test-COMBO-s3cret",
    "GOOGLE_API_KEY": "AIzaTest-COMBO-s3cret",
}


def cassette_calls(urls: dict[str, str], db_file: Path) -> list[str]:
    """An Anthropic stream, a Gemini stream, a pydantic-ai run with a tool call and an
    embedding, through one plane whose usage rows land in `db_file`; returns what each
    answered. Run by the recording test and by the replaying process alike."""
    profiles = {
        "summarise": ResolvedProfile(
            purpose="summarise",
            model=ModelRef(provider="anthropic", model=CLAUDE),
            base_url=urls["anthropic"],
        ),
        "score": ResolvedProfile(
            purpose="score",
            model=ModelRef(provider="gcp.gemini", model=FLASH),
            base_url=urls["gemini"],
        ),
        "agent": ResolvedProfile(
            purpose="agent",
            model=ModelRef(provider="anthropic", model=HAIKU),
            base_url=urls["anthropic"],
        ),
        "embedding": ResolvedProfile(
            purpose="embedding",
            model=ModelRef(provider="openai", model=EMBEDDER),
            base_url=urls["openai"],
        ),
    }
    settings = load_settings(None, db=db_file, telemetry="embedded")
    with ControlPlane(
        settings, resolver=StaticProfiles(profiles), retry_policy=RetryPolicy(max_retries=0)
    ) as plane:
        scope = {"org": "acme", "domain": "acme-eu", "context": "support"}
        summary = "".join(
            str(chunk.content) for chunk in plane.chat_model("summarise", **scope).stream("q")
        )
        score = "".join(
            str(chunk.content) for chunk in plane.chat_model("score", **scope).stream("q")
        )
        agent = Agent(plane.pydantic_ai_model("agent", **scope))

        @agent.tool_plain
        def get_weather(city: str) -> str:
            """The weather in a city."""
            return f"sunny in {city}"

        with attribution(user="alice"):
            ran = asyncio.run(agent.run("Weather in Paris?")).output
        vector = plane.embeddings("embedding", **scope).embed_query("a query")
        assert plane.flush()
    return [summary, score, ran, json.dumps(vector)]


def ledger_rows(db_file: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db_file), read_only=True)
    try:
        return sorted(con.execute(f"select {USAGE_COLUMNS} from llm_usage").fetchall(), key=str)
    finally:
        con.close()


REPLAY = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from test_issue17_combos import cassette_calls
    from comptroller.control.testing import cassette

    path, urls, db_file = Path(sys.argv[2]), json.loads(sys.argv[3]), Path(sys.argv[4])
    with cassette(path, mode="replay"):
        answers = cassette_calls(urls, db_file)
    print(json.dumps(answers))
    """
)


def test_one_cassette_of_every_kind_of_call_replays_in_a_fresh_process_with_no_key(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "combo.yaml"
    for name, secret in SECRETS.items():
        monkeypatch.setenv(name, secret)
    with (
        FakeAnthropicServer() as claude,
        FakeGeminiServer() as gemini,
        FakeOpenAIServer() as gpt,
    ):
        claude.behave(CLAUDE, AnthropicBehaviour(content="a summary", cache_read_tokens=32))
        claude.behave(
            HAIKU,
            AnthropicBehaviour(
                content="Sunny in Paris.",
                tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
            ),
        )
        gemini.behave(FLASH, GeminiBehaviour(content="a score", thoughts_tokens=12))
        urls = {"anthropic": claude.base_url, "gemini": gemini.base_url, "openai": gpt.base_url}
        with cassette(path):
            recorded = cassette_calls(urls, data_dir / "recorded.duckdb")
        assert claude.request_count(HAIKU) == 2  # the tool call, then the answer
    text = path.read_text()
    for secret in SECRETS.values():
        assert secret not in text

    environment = {
        name: value for name, value in os.environ.items() if not name.endswith("_API_KEY")
    }
    environment["COMPTROLLER_DATA_DIR"] = str(tmp_path / "ci-data")
    replay_db = tmp_path / "ci-data" / "replayed.duckdb"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            REPLAY,
            str(Path(__file__).parent),
            str(path),
            json.dumps(urls),
            str(replay_db),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == recorded
    rows = ledger_rows(data_dir / "recorded.duckdb")
    assert len(rows) == 5  # two streams, two agent requests, one embedding
    assert {row[0] for row in rows} == {"anthropic", "gcp.gemini", "openai"}
    assert ledger_rows(replay_db) == rows


def test_a_fallback_to_another_providers_oauth_credential_renews_it_after_a_401(
    service: ProfileService, data_dir: Path, tokens: FakeTokenServer
) -> None:
    sink = InMemorySink()
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    with FakeAnthropicServer() as claude, FakeGeminiServer() as gemini:
        service.credentials.set(GLOBAL, "anthropic", "sk-ant-static", actor=PLATFORM)
        service.credentials.set(GLOBAL, "google", tokens.bundle(), actor=PLATFORM, kind="oauth")
        service.set_profile(
            GLOBAL,
            "reasoning",
            spec(
                model=f"anthropic:{CLAUDE}@{claude.base_url}",
                fallbacks=(f"gcp.gemini:{FLASH}@{gemini.base_url}",),
                allow_cross_provider=True,
            ),
            actor=PLATFORM,
        )
        claude.script(CLAUDE, AnthropicReply.overloaded())
        gemini.script(FLASH, GeminiReply.server_error(401))
        with ControlPlane(
            settings,
            resolver=service,
            sink=sink,
            retry_policy=RetryPolicy(max_retries=0),
            circuit_policy=CircuitPolicy(consecutive_failures=1),
        ) as plane:
            assert plane.chat_model("reasoning", org="acme").invoke("q").content
            assert plane.flush()
        assert [sent_secret(h) for h in claude.headers] == ["sk-ant-static"]
        assert [sent_secret(h) for h in gemini.headers] == tokens.issued
    assert len(tokens.grants) == 1
    rows = sink.usage_rows()
    assert [
        (r[semconv.GEN_AI_PROVIDER_NAME], r[semconv.FALLBACK_DEPTH], r[semconv.OUTCOME])
        for r in rows
    ][-1] == ("gcp.gemini", 1, "ok")
    opened = sink.events(semconv.EVENT_CIRCUIT_OPENED)
    # The 401 was the credential's fault, renewed: it does not open Gemini's circuit.
    assert [e[semconv.GEN_AI_PROVIDER_NAME] for e in opened] == ["anthropic"]


def test_embeddings_under_a_per_user_cap_refuse_only_that_user() -> None:
    with FakeOpenAIServer() as server:
        profile = ResolvedProfile(
            purpose="embedding",
            model=ModelRef(provider="openai", model=EMBEDDER),
            base_url=server.base_url,
        )
        sink = InMemorySink()
        # $0.02 per million tokens: 4,000 bytes reserve $0.00008 (the input's bound), and the
        # server reports 1,001 tokens ($0.00002): six calls fit under $0.0002, a seventh does not.
        budgets = [{"by": "user", "daily_usd": "0.0002"}]
        with static_plane(profile, budgets=budgets, sink=sink) as plane:
            emb = plane.embeddings("embedding", domain="acme-eu")
            with attribution(user="alice"):
                for _ in range(6):
                    emb.embed_documents(["x" * 4000])
                with pytest.raises(BudgetExceeded) as refused:
                    emb.embed_documents(["x" * 4000])
            with attribution(user="bob"):
                emb.embed_documents(["x" * 4000])
            assert plane.flush()
    assert refused.value.key.attribute == "user=alice"
    assert server.request_count() == 7
    assert [r.get(semconv.USER_ID) for r in sink.usage_rows()] == ["alice"] * 6 + ["bob"]


@pytest.mark.parametrize(
    ("provider", "model", "sent_cap"),
    [
        ("gcp.gemini", FLASH, lambda body: body["generationConfig"]["maxOutputTokens"]),
        ("anthropic", CLAUDE, lambda body: body["max_tokens"]),
    ],
)
def test_an_agents_own_max_tokens_sizes_the_reservation_and_reaches_each_provider(
    provider: str, model: str, sent_cap: Any
) -> None:
    server: Any = FakeGeminiServer() if provider == "gcp.gemini" else FakeAnthropicServer()
    with server:
        profile = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider=provider, model=model),
            base_url=server.base_url,
            budget=BudgetSpec(daily_usd=Decimal("0.01")),
            defaults=CallDefaults(max_tokens=100_000),
        )
        with static_plane(profile) as plane:
            agent = Agent(plane.pydantic_ai_model("reasoning", domain="acme-eu"))
            with pytest.raises(BudgetExceeded):
                asyncio.run(agent.run("q"))  # the profile's 100,000 tokens do not fit
            assert server.requests == []
            settings = ModelSettings(max_tokens=50)
            assert asyncio.run(agent.run("q", model_settings=settings)).output
        (request,) = server.requests
    assert sent_cap(request) == 50


def test_a_per_user_budget_counts_what_a_cross_provider_fallback_spent() -> None:
    sink = InMemorySink()
    clock = FakeClock()
    guard = MemoryGuard(clock=clock)
    settings = load_settings(
        telemetry="none", control={"attribution_budgets": [{"by": "user", "daily_usd": "1"}]}
    )
    with FakeAnthropicServer() as claude, FakeGeminiServer() as gemini:
        profile = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider="anthropic", model=CLAUDE),
            base_url=claude.base_url,
            fallbacks=(ModelRef.parse(f"gcp.gemini:{FLASH}@{gemini.base_url}"),),
            allow_cross_provider=True,
            budget=BudgetSpec(daily_usd=Decimal(5)),
            defaults=CallDefaults(max_tokens=100),
        )
        claude.script(CLAUDE, AnthropicReply.overloaded(), AnthropicReply.overloaded())
        with ControlPlane(
            settings,
            resolver=StaticProfiles({"reasoning": profile}),
            guard=guard,
            sink=sink,
            clock=clock,
            retry_policy=RetryPolicy(max_retries=1, base_s=0.01),
        ) as plane:
            with attribution(user="alice"):
                agent = Agent(plane.pydantic_ai_model("reasoning", domain="t", context="c"))
                assert asyncio.run(agent.run("q")).output  # Anthropic twice, then Gemini
                plane.chat_model("reasoning", domain="t", context="c").invoke("q")
            assert plane.flush()
    rows = sink.usage_rows()
    assert [(r[semconv.GEN_AI_PROVIDER_NAME], r[semconv.OUTCOME]) for r in rows] == [
        ("anthropic", "error"),
        ("anthropic", "error"),
        ("gcp.gemini", "ok"),
        ("anthropic", "ok"),
    ]
    assert {r.get(semconv.USER_ID) for r in rows} == {"alice"}
    spent = sum(Decimal(r[semconv.COST_USD]) for r in rows)
    assert spent > 0
    alice = guard.ledger(GuardKey("t", "*", "*", "user=alice"), day=guard.today())
    assert (alice.spent_usd, alice.reserved_usd) == (spent, 0)
    profile_key = GuardKey("t", "c", "reasoning", "")
    assert guard.ledger(profile_key, day=guard.today()).spent_usd == spent
