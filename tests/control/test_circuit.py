"""Circuit breakers: closed → open → half-open → closed, with an event at each transition."""

from __future__ import annotations

from typing import Any

import pytest
from call_helpers import profile, rig

from comptroller import semconv
from comptroller.control import CircuitOpen, CircuitPolicy, ExhaustedFallbacks, RetryPolicy
from comptroller.control._circuit import CircuitBreakers
from comptroller.control.testing import Fail, FakeChatModel, FakeClock


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_name: str, attributes: Any) -> None:
        self.seen.append((event_name, dict(attributes)))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


def breakers(**policy: Any) -> tuple[CircuitBreakers, FakeClock, Events]:
    clock = FakeClock()
    events = Events()
    return CircuitBreakers(CircuitPolicy(**policy), clock=clock, events=events), clock, events


def test_opens_after_consecutive_failures_then_half_opens_one_probe_then_closes() -> None:
    cb, clock, events = breakers(consecutive_failures=3, cooldown_s=30)
    for _ in range(3):
        assert cb.allow("openai", "m")
        cb.record_failure("openai", "m", reason="503")

    assert not cb.allow("openai", "m")
    assert cb.snapshot("openai", "m").state == "open"
    clock.advance(29)
    assert not cb.allow("openai", "m")
    clock.advance(1)
    assert cb.allow("openai", "m")  # the probe
    assert not cb.allow("openai", "m")  # everybody else waits for it
    cb.record_success("openai", "m")

    assert cb.snapshot("openai", "m").state == "closed"
    assert events.names() == [
        semconv.EVENT_CIRCUIT_OPENED,
        semconv.EVENT_CIRCUIT_HALF_OPENED,
        semconv.EVENT_CIRCUIT_CLOSED,
    ]
    opened = events.seen[0][1]
    assert opened[semconv.CIRCUIT_FAILURES] == 3
    assert opened[semconv.CIRCUIT_CALLS] == 3
    assert "3 consecutive failures" in opened[semconv.CIRCUIT_REASON]
    assert opened[semconv.GEN_AI_PROVIDER_NAME] == "openai"


def test_failed_probe_reopens_for_another_cooldown() -> None:
    cb, clock, events = breakers(consecutive_failures=1, cooldown_s=10)
    cb.record_failure("p", "m", reason="500")
    clock.advance(10)
    assert cb.allow("p", "m")

    cb.record_failure("p", "m", reason="500")

    snap = cb.snapshot("p", "m")
    assert snap.state == "open"
    assert snap.retry_in_s == pytest.approx(10)
    assert events.names()[-1] == semconv.EVENT_CIRCUIT_OPENED
    assert "probe failed" in events.seen[-1][1][semconv.CIRCUIT_REASON]


def test_failure_ratio_in_window_opens_without_consecutive_run() -> None:
    cb, _, events = breakers(consecutive_failures=100, failure_ratio=0.5, min_calls=10)
    for i in range(10):
        if i % 2:
            cb.record_failure("p", "m", reason="429")
        else:
            cb.record_success("p", "m")

    assert cb.snapshot("p", "m").state == "open"
    assert "failure ratio 5/10" in events.seen[0][1][semconv.CIRCUIT_REASON]


def test_window_rolls_so_old_failures_do_not_count() -> None:
    cb, clock, _ = breakers(consecutive_failures=100, failure_ratio=0.5, min_calls=4, window_s=60)
    for _ in range(3):
        cb.record_failure("p", "m", reason="500")
    clock.advance(61)
    cb.record_success("p", "m")
    cb.record_success("p", "m")
    cb.record_success("p", "m")
    cb.record_failure("p", "m", reason="500")

    assert cb.snapshot("p", "m").state == "closed"


def test_quota_exhaustion_opens_at_once_for_the_long_cooldown() -> None:
    cb, clock, events = breakers(cooldown_s=30, quota_cooldown_s=3600)

    cb.record_failure("p", "m", reason="402", quota=True)

    snap = cb.snapshot("p", "m")
    assert snap.state == "open"
    assert snap.cooldown_s == 3600
    clock.advance(1800)
    assert not cb.allow("p", "m")
    assert events.seen[0][1][semconv.CIRCUIT_COOLDOWN_S] == 3600


def test_guarded_calls_skip_an_open_circuit_to_the_fallback_and_emit_events() -> None:
    def reply(messages: object, info: Any) -> object:
        return Fail.server_error() if info.model == "gpt-4o-mini" else "fallback"

    r = rig(
        FakeChatModel(responses={"reasoning": reply}),
        {"reasoning": profile(fallbacks=("openai:gpt-4o",))},
        circuit=CircuitPolicy(consecutive_failures=2, cooldown_s=60),
        retry=RetryPolicy(max_retries=1, base_s=0.01),
    )
    model = r.plane.chat_model("reasoning")

    assert model.invoke("1").content == "fallback"  # 2 failures open gpt-4o-mini
    assert model.invoke("2").content == "fallback"  # straight to the fallback

    rows = r.flush().usage_rows()
    assert [row[semconv.GEN_AI_REQUEST_MODEL] for row in rows] == [
        "gpt-4o-mini",
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4o",
    ]
    state = r.plane.circuit_state("openai", "gpt-4o-mini")
    assert state.state == "open"
    (opened,) = r.sink.events(semconv.EVENT_CIRCUIT_OPENED)
    assert opened[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert {s.model for s in r.plane.circuit_states()} == {"gpt-4o-mini", "gpt-4o"}


def test_all_circuits_open_raises_circuit_open_with_that_outcome() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": Fail.server_error()}),
        circuit=CircuitPolicy(consecutive_failures=1, cooldown_s=60),
        retry=RetryPolicy(max_retries=0),
    )
    model = r.plane.chat_model("reasoning")
    with pytest.raises(ExhaustedFallbacks):
        model.invoke("1")

    with pytest.raises(CircuitOpen) as caught:
        model.invoke("2")

    assert caught.value.retry_after_s == pytest.approx(60)
    outcomes = [s.attributes[semconv.OUTCOME] for s in r.flush().call_spans()]
    assert outcomes == ["exhausted_fallbacks", "circuit_open"]


def test_half_open_probe_through_the_plane_closes_the_circuit_on_success() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": [Fail.server_error(), "recovered"]}),
        circuit=CircuitPolicy(consecutive_failures=1, cooldown_s=60),
        retry=RetryPolicy(max_retries=0),
    )
    model = r.plane.chat_model("reasoning")
    with pytest.raises(ExhaustedFallbacks):
        model.invoke("1")
    r.clock.advance(60)

    assert model.invoke("2").content == "recovered"

    names = [e["event_name"] for e in r.flush().events() if e["event_name"].startswith("llm.")]
    assert names == [
        semconv.EVENT_CIRCUIT_OPENED,
        semconv.EVENT_CIRCUIT_HALF_OPENED,
        semconv.EVENT_CIRCUIT_CLOSED,
    ]


def test_a_success_admitted_before_the_circuit_opened_does_not_close_it() -> None:
    cb, _clock, events = breakers(consecutive_failures=2, cooldown_s=30)
    assert cb.allow("openai", "m")  # a slow call, admitted while the circuit is closed
    for _ in range(2):
        assert cb.allow("openai", "m")
        cb.record_failure("openai", "m", reason="503")
    assert cb.snapshot("openai", "m").state == "open"

    cb.record_success("openai", "m")  # the slow call answers after all

    assert cb.snapshot("openai", "m").state == "open"
    assert not cb.allow("openai", "m")
    assert events.names() == [semconv.EVENT_CIRCUIT_OPENED]


def test_a_retry_does_not_go_to_a_model_whose_circuit_opened_meanwhile() -> None:
    def reply(messages: object, info: Any) -> object:
        return Fail.server_error() if info.model == "gpt-4o-mini" else "fallback"

    r = rig(
        FakeChatModel(responses={"reasoning": reply}),
        {"reasoning": profile(fallbacks=("openai:gpt-4o",))},
        circuit=CircuitPolicy(consecutive_failures=2, cooldown_s=60),
        retry=RetryPolicy(max_retries=5, base_s=0.01),
    )

    assert r.plane.chat_model("reasoning").invoke("1").content == "fallback"

    # The second failure opened the circuit: no third try on gpt-4o-mini, on to the fallback.
    rows = r.flush().usage_rows()
    assert [row[semconv.GEN_AI_REQUEST_MODEL] for row in rows] == [
        "gpt-4o-mini",
        "gpt-4o-mini",
        "gpt-4o",
    ]
    assert r.plane.circuit_state("openai", "gpt-4o-mini").state == "open"
