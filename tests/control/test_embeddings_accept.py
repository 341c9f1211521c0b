"""`plane.embeddings` exercised as a user would: limits, budgets, circuits and attribution.

Real parts only: langchain-openai's client talks to `FakeOpenAIServer` over HTTP, the guard
is the in-memory guard on a `FakeClock`, telemetry goes to `InMemorySink`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    BudgetUnverifiable,
    CircuitPolicy,
    ControlPlane,
    ExhaustedFallbacks,
    MemoryGuard,
    ModelRef,
    RateLimited,
    RateLimitSpec,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
    attribution,
)
from comptroller.control.testing import (
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
    ServerReply,
)
from comptroller.errors import UsageError

AT = datetime(2026, 6, 1, 12, tzinfo=UTC)
SMALL = "text-embedding-3-small"
LARGE = "text-embedding-3-large"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


def make_plane(
    server: FakeOpenAIServer,
    *,
    model: str = f"openai:{SMALL}",
    fallbacks: tuple[str, ...] = (),
    budget: str | None = None,
    rate: RateLimitSpec | None = None,
    max_retries: int = 0,
    circuit_after: int = 50,
) -> tuple[ControlPlane, InMemorySink, FakeClock]:
    profile = ResolvedProfile(
        purpose="embedding",
        model=ModelRef.parse(model),
        fallbacks=tuple(ModelRef.parse(f) for f in fallbacks),
        base_url=server.base_url,
        budget=BudgetSpec(daily_usd=Decimal(budget)) if budget is not None else None,
        rate_limit=rate,
    )
    clock = FakeClock(start=AT.timestamp())
    sink = InMemorySink()
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"embedding": profile}),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        retry_policy=RetryPolicy(max_retries=max_retries, base_s=0.01),
        circuit_policy=CircuitPolicy(consecutive_failures=circuit_after),
    )
    return plane, sink, clock


# --- a chat model named for embeddings ----------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fallbacks"),
    [
        ("openai:gpt-4.1-mini", ()),
        (f"openai:{SMALL}", ("openai:gpt-4o",)),  # a chat model further down the chain
    ],
)
def test_a_chat_model_in_an_embedding_chain_is_refused_before_any_request(
    server: FakeOpenAIServer, model: str, fallbacks: tuple[str, ...]
) -> None:
    # The fake server, like many OpenAI-compatible endpoints, would embed with any model.
    plane, sink, _ = make_plane(server, model=model, fallbacks=fallbacks)
    with plane:
        emb = plane.embeddings(domain="acme-eu", org="acme")
        for attempt in (
            emb.embed_documents,
            lambda texts: asyncio.run(emb.aembed_documents(texts)),
        ):
            with pytest.raises(UsageError) as refused:
                attempt(["refund policy"])
            message = str(refused.value)
            assert "chat model" in message
            assert "gpt-4" in message
            assert "comptroller profiles set embedding" in message
        assert emb.embed_documents([]) == []  # nothing to send, nothing to refuse
        assert plane.flush()
    assert server.request_count() == 0
    assert sink.usage_rows() == []


def test_embedding_models_with_an_output_price_are_still_embedding_models(
    server: FakeOpenAIServer,
) -> None:
    # genai-prices lists an output price for mistral-embed; its name says what it is.
    server.behave("mistral-embed", ModelBehaviour(prompt_tokens=3))
    plane, sink, _ = make_plane(server, model="openai:mistral-embed")
    with plane:
        assert len(plane.embeddings().embed_query("x")) == 8
        assert plane.flush()
    assert [r[semconv.OUTCOME] for r in sink.usage_rows()] == ["ok"]


# --- limits and budgets --------------------------------------------------------------------


def test_the_request_bucket_refuses_like_a_chat_call_or_waits_when_asked(
    server: FakeOpenAIServer,
) -> None:
    plane, _, clock = make_plane(server, rate=RateLimitSpec(requests_per_interval=2, interval_s=60))
    with plane:
        emb = plane.embeddings(domain="acme-eu", context="search")
        emb.embed_query("a")
        emb.embed_query("b")
        with pytest.raises(RateLimited) as refused:
            emb.embed_query("c")
        assert "requests" in str(refused.value)
        assert server.request_count() == 2

        patient = plane.embeddings(domain="acme-eu", context="search", rate_limit_wait_s=60)
        before = clock.time()
        assert len(patient.embed_query("c")) == 8
        assert clock.time() > before  # it waited for the bucket (on the fake clock)
    assert server.request_count() == 3


def test_the_token_bucket_counts_every_batch_of_a_long_list(server: FakeOpenAIServer) -> None:
    server.behave(SMALL, ModelBehaviour(prompt_tokens=40))
    plane, _, _ = make_plane(
        server,
        rate=RateLimitSpec(tokens_per_interval=100, interval_s=60, requests_per_interval=100),
    )
    with plane:
        emb = plane.embeddings(batch_size=2)
        with pytest.raises(RateLimited) as refused:
            # Three batches of 2 x 20 bytes: the third does not fit in the minute.
            emb.embed_documents(["x" * 20] * 6)
        with pytest.raises(RateLimited) as refused_async:
            asyncio.run(emb.aembed_documents(["x" * 20] * 2))
    assert server.request_count() == 2  # the batches after a refused one are not sent
    # The caller is told what was already embedded and paid for, and where to resume.
    assert refused.value.__notes__ == [
        "texts [0:4] of 6 were embedded (and charged) before this batch, but no vectors are "
        "returned: embed texts[4:] once the cause is gone, or all of them again"
    ]
    assert not getattr(refused_async.value, "__notes__", [])  # nothing was sent before it


def test_a_model_without_a_price_under_a_budget_fails_closed(server: FakeOpenAIServer) -> None:
    plane, _, _ = make_plane(server, model="openai:in-house-embedder", budget="10")
    with plane, pytest.raises(BudgetUnverifiable, match="fail closed"):
        plane.embeddings().embed_query("x")
    assert server.request_count() == 0


def test_the_daily_cap_is_reserved_from_the_input_and_settled_at_the_reported_usage(
    server: FakeOpenAIServer,
) -> None:
    # $0.02 per million tokens: a cap of $0.0001 is 5,000 tokens a day.
    server.behave(SMALL, ModelBehaviour(prompt_tokens=1_000))
    plane, sink, _ = make_plane(server, budget="0.0001")
    with plane:
        emb = plane.embeddings(domain="acme-eu")
        for _ in range(3):  # reserves 3,000 each, settles 1,000 each
            emb.embed_query("y" * 3_000)
        with pytest.raises(BudgetExceeded) as refused:
            emb.embed_query("y" * 3_000)  # 3,000 settled + 3,000 reserved > 5,000
        # The guard's advice is a chat call's; the note says what helps an embedding.
        assert any("smaller batch_size" in note for note in refused.value.__notes__)
        assert len(emb.embed_query("y" * 2_000)) == 8  # what is left still serves
        assert plane.flush()
    assert server.request_count() == 4
    costs = [Decimal(r[semconv.COST_USD]) for r in sink.usage_rows()]
    assert costs == [Decimal("0.00002")] * 4


# --- retries, fallbacks and circuits -------------------------------------------------------


def test_an_open_circuit_sends_batches_straight_to_the_next_embedding_model(
    server: FakeOpenAIServer,
) -> None:
    server.script(SMALL, *[ServerReply.server_error(503)] * 10)
    plane, sink, _ = make_plane(server, fallbacks=(f"openai:{LARGE}",), circuit_after=2)
    with plane:
        emb = plane.embeddings()
        for text in ("a", "b", "c", "d"):
            assert len(emb.embed_query(text)) == 8
        assert plane.flush()
    assert server.request_count(SMALL) == 2  # then the circuit is open
    assert server.request_count(LARGE) == 4
    assert len(sink.events("llm.circuit.opened")) == 1
    ok = [r for r in sink.usage_rows() if r[semconv.OUTCOME] == "ok"]
    assert {r[semconv.GEN_AI_REQUEST_MODEL] for r in ok} == {LARGE}
    assert all(r[semconv.FALLBACK_DEPTH] == 1 for r in ok)


def test_when_every_embedding_model_fails_the_caller_gets_every_error(
    server: FakeOpenAIServer,
) -> None:
    server.script(SMALL, ServerReply.rate_limited(0.01), ServerReply.rate_limited(0.01))
    server.script(LARGE, ServerReply.server_error(500), ServerReply.server_error(500))
    plane, sink, _ = make_plane(server, fallbacks=(f"openai:{LARGE}",), max_retries=1)
    with plane:
        with pytest.raises(ExhaustedFallbacks) as failed:
            plane.embeddings().embed_query("a")
        assert plane.flush()
    assert len(failed.value.exceptions) == 4
    assert [r[semconv.OUTCOME] for r in sink.usage_rows()] == ["error"] * 4


# --- attribution and concurrency -----------------------------------------------------------


def test_embedding_rows_carry_the_attribution_of_the_block(server: FakeOpenAIServer) -> None:
    plane, sink, _ = make_plane(server)
    with plane:
        emb = plane.embeddings(domain="acme-eu")
        with attribution(user="u-42", feature="search", team="growth"):
            emb.embed_query("a")
            asyncio.run(emb.aembed_documents(["b", "c"]))
        emb.embed_query("outside")
        assert plane.flush()
    rows = sink.usage_rows()
    assert [r.get(semconv.USER_ID) for r in rows] == ["u-42", "u-42", None]
    assert [r.get(semconv.FEATURE) for r in rows] == ["search", "search", None]


def test_concurrent_async_batches_each_get_their_own_vectors_and_row(
    server: FakeOpenAIServer,
) -> None:
    plane, sink, _ = make_plane(server)

    async def embed_all() -> list[list[list[float]]]:
        emb = plane.embeddings()
        return await asyncio.gather(*(emb.aembed_documents([f"t{i}"]) for i in range(8)))

    with plane:
        results = asyncio.run(embed_all())
        single = plane.embeddings().embed_query("t3")
        assert plane.flush()
    assert results[3][0] == pytest.approx(single, abs=1e-6)
    assert len(sink.usage_rows()) == 9


def test_the_default_batch_splits_a_long_list_in_order(server: FakeOpenAIServer) -> None:
    plane, sink, _ = make_plane(server)
    texts = [f"doc {i}" for i in range(1_100)]
    with plane:
        emb = plane.embeddings()
        vectors = emb.embed_documents(texts)
        assert vectors[1_099] == pytest.approx(emb.embed_query("doc 1099"), abs=1e-6)
        assert plane.flush()
    assert [len(body["input"]) for body in server.requests] == [512, 512, 76, 1]
    assert len(sink.usage_rows()) == 4


# --- the key from the environment ----------------------------------------------------------


def test_the_public_endpoint_takes_the_key_from_openai_api_key(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No credential in the profile and no base_url: the README's default set-up, the key in
    # OPENAI_API_KEY (the endpoint redirected to the fake server as the SDK allows).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    profile = ResolvedProfile(purpose="embedding", model=ModelRef.parse(f"openai:{SMALL}"))
    sink = InMemorySink()
    with ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"embedding": profile}),
        sink=sink,
    ) as plane:
        emb = plane.embeddings(domain="acme-eu")
        assert len(asyncio.run(emb.aembed_query("a"))) == 8
        assert len(emb.embed_query("a")) == 8
        assert plane.flush()
    assert [r[semconv.OUTCOME] for r in sink.usage_rows()] == ["ok", "ok"]


# --- the purpose decides which handle serves it ----------------------------------------------


def test_a_purpose_serves_only_the_handle_of_its_kind() -> None:
    # The default taxonomy declares `embedding` as an embedding purpose and `reasoning` as a
    # chat one, also when the profiles come from elsewhere (StaticProfiles has no taxonomy).
    with ControlPlane(load_settings(telemetry="none"), resolver=StaticProfiles({})) as plane:
        with pytest.raises(UsageError, match=r"plane\.embeddings\('embedding'"):
            plane.chat_model("embedding", org="acme")
        with pytest.raises(UsageError, match="not an embedding purpose"):
            plane.embeddings("reasoning", org="acme")
        # A purpose nobody declared is the caller's to use either way.
        assert plane.chat_model("triage_x", org="acme") is not None
        assert plane.embeddings("search_x", org="acme") is not None
