"""The shipped test doubles behave as documented (they are product, not test helpers)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from call_helpers import profile, rig
from langchain_core.messages import HumanMessage

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import CallInfo, ControlPlane, ModelRef, ResolvedProfile, StaticProfiles
from comptroller.control._classify import classify
from comptroller.control.testing import (
    Fail,
    FakeChatModel,
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
    ServerReply,
)


def test_fake_replies_by_purpose_content_class_and_wildcard() -> None:
    fake = FakeChatModel(
        responses={
            "reasoning": "reasoned",
            "scoring:structured": {"score": 1},
            "scoring": "scored as text",
            "*": "anything else",
        }
    )
    r = rig(
        fake,
        {
            "reasoning": profile(),
            "scoring": profile("scoring"),
            "other": profile("other"),
        },
    )

    assert r.plane.chat_model("reasoning").invoke("x").content == "reasoned"
    assert r.plane.chat_model("scoring").invoke("x").content == "scored as text"
    assert r.plane.chat_model("other").invoke("x").content == "anything else"


def test_fake_sequence_is_consumed_in_order_and_the_last_repeats() -> None:
    r = rig(FakeChatModel(responses={"reasoning": ["one", "two"]}))
    model = r.plane.chat_model("reasoning")

    assert [model.invoke("x").content for _ in range(4)] == ["one", "two", "two", "two"]


def test_fake_callable_sees_the_messages_and_the_guarded_attempt() -> None:
    seen: list[tuple[str, CallInfo | None]] = []

    def reply(messages: list[Any], info: CallInfo | None) -> str:
        seen.append((str(messages[-1].content), info))
        return "echo: " + str(messages[-1].content)

    r = rig(FakeChatModel(responses={"reasoning": reply}))
    answer = r.plane.chat_model("reasoning", domain="acme", context="c").invoke("hello")

    assert answer.content == "echo: hello"
    text, info = seen[0]
    assert text == "hello"
    assert info is not None
    assert (info.purpose, info.tenant, info.context, info.model, info.attempt) == (
        "reasoning",
        "acme",
        "c",
        "gpt-4o-mini",
        1,
    )


def test_fake_works_without_a_control_plane() -> None:
    fake = FakeChatModel(responses={"*": "plain"})

    answer = fake.invoke([HumanMessage("hi")])

    assert answer.content == "plain"
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == 10


@pytest.mark.parametrize(
    ("fail", "kind", "error_type", "retry_after"),
    [
        (Fail.rate_limited(retry_after_s=2), "transport", "429", 2.0),
        (Fail.server_error(503), "transport", "503", None),
        (Fail.timeout(), "transport", "timeout", None),
        (Fail.truncated_stream(), "transport", "RemoteProtocolError", None),
    ],
)
def test_scripted_failures_raise_what_the_provider_sdk_raises(
    fail: Fail, kind: str, error_type: str, retry_after: float | None
) -> None:
    fake = FakeChatModel(responses={"*": fail})

    with pytest.raises(Exception, match=r".") as caught:
        fake.invoke("x")

    found = classify(caught.value)
    assert (found.kind, found.error_type, found.retry_after_s) == (kind, error_type, retry_after)


def test_fake_clock_advances_on_sleep_without_waiting() -> None:
    clock = FakeClock(start=100.0)
    clock.sleep(5)
    clock.advance(1)

    assert clock.time() == 106.0
    assert clock.monotonic() - 1000.0 == 6.0
    assert clock.sleeps == [5]
    assert clock() == 106.0


async def test_fake_clock_async_sleep_records_too() -> None:
    clock = FakeClock()
    await clock.asleep(3)
    assert clock.sleeps == [3]


def test_in_memory_sink_separates_usage_rows_from_events() -> None:
    r = rig(FakeChatModel(responses={"reasoning": "ok"}))
    r.plane.events.emit(semconv.EVENT_BUDGET_WARNING, {semconv.TENANT: "acme"})
    r.plane.chat_model("reasoning").invoke("x")

    sink: InMemorySink = r.flush()

    assert len(sink.usage_rows()) == 1
    assert sink.events(semconv.EVENT_BUDGET_WARNING) == [
        {semconv.TENANT: "acme", "event_name": semconv.EVENT_BUDGET_WARNING}
    ]
    sink.clear()
    assert sink.spans() == []
    assert sink.log_records() == []


def test_fake_server_streams_usage_in_a_final_chunk_with_cached_tokens() -> None:
    with FakeOpenAIServer() as server:
        server.behave(
            "m",
            ModelBehaviour(content="a b", prompt_tokens=30, completion_tokens=2, cached_tokens=16),
        )
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.Client() as client:
            text = client.post(server.base_url + "/chat/completions", json=body).text

    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens_details"]["cached_tokens"] == 16
    finishing = json.loads(events[-3])
    assert finishing["choices"][0]["finish_reason"] == "stop"


def test_fake_server_scripts_429_with_retry_after_then_answers() -> None:
    with FakeOpenAIServer() as server, httpx.Client() as client:
        server.script("m", ServerReply.rate_limited(retry_after_s=3))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        first = client.post(server.base_url + "/chat/completions", json=body)
        second = client.post(server.base_url + "/chat/completions", json=body)

    assert first.status_code == 429
    assert first.headers["retry-after"] == "3"
    assert second.status_code == 200
    assert second.json()["usage"]["prompt_tokens"] > 0
    assert server.request_count("m") == 2


def test_fake_server_truncated_stream_has_no_finish_and_no_usage() -> None:
    with FakeOpenAIServer() as server, httpx.Client() as client:
        server.script("m", ServerReply.truncated_stream())
        body = {
            "model": "m",
            "messages": [],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        text = client.post(server.base_url + "/chat/completions", json=body).text

    assert "[DONE]" not in text
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert chunks
    assert all(chunk["usage"] is None for chunk in chunks)  # null until the final chunk
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks)


def _plane(base_url: str, sink: InMemorySink) -> ControlPlane:
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model="gpt-4o-mini"),
        base_url=base_url,
    )
    return ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": prof}),
        sink=sink,
    )


def test_cassette_replays_recorded_exchanges_with_no_server_and_no_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vcr

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cassette = str(tmp_path / "summarise.yaml")
    recorder = vcr.VCR(filter_headers=["authorization"], record_mode="once")
    with FakeOpenAIServer() as server:
        server.behave(
            "gpt-4o-mini",
            ModelBehaviour(content="recorded answer", prompt_tokens=12, completion_tokens=3),
        )
        base_url = server.base_url
        with recorder.use_cassette(cassette), _plane(base_url, InMemorySink()) as plane:
            recorded = plane.chat_model("reasoning").invoke("Summarise")

    assert "authorization" not in Path(cassette).read_text().lower()
    replayer = vcr.VCR(filter_headers=["authorization"], record_mode="none")
    sink = InMemorySink()
    with replayer.use_cassette(cassette), _plane(base_url, sink) as plane:
        replayed = plane.chat_model("reasoning").invoke("Summarise")
        plane.flush()

    assert replayed.content == recorded.content == "recorded answer"
    (row,) = sink.usage_rows()
    assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 12
    assert Decimal(row[semconv.COST_USD]) > 0
