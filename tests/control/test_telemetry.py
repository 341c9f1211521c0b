"""Telemetry of the guarded call: per-plane providers, span shape, usage rows, content gating."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from call_helpers import profile, rig
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import ControlPlane, StaticProfiles
from comptroller.control._telemetry import NullSink, Telemetry
from comptroller.control.testing import Fail, FakeChatModel, InMemorySink


def test_each_plane_has_its_own_providers_and_leaves_the_globals_alone() -> None:
    before = trace.get_tracer_provider()
    r1 = rig(FakeChatModel(responses={"reasoning": "a"}))
    r2 = rig(FakeChatModel(responses={"reasoning": "b"}))

    r1.plane.chat_model("reasoning").invoke("x")

    assert trace.get_tracer_provider() is before
    assert len(r1.flush().usage_rows()) == 1
    assert r2.flush().usage_rows() == []


def test_usage_row_is_a_log_record_in_its_attempt_spans_context_stamped_at_request_start() -> None:
    r = rig(FakeChatModel(responses={"reasoning": "ok"}), {"reasoning": profile(budget="2.5")})
    start = r.clock.time()

    r.plane.chat_model("reasoning", domain="acme", org="acme-org", context="ctx").invoke("x")

    sink = r.flush()
    (span,) = sink.attempt_spans()
    (record,) = [
        x.log_record for x in sink.log_records() if x.log_record.event_name == semconv.EVENT_USAGE
    ]
    assert record.trace_id == span.context.trace_id
    assert record.span_id == span.context.span_id
    assert record.timestamp == int(start * 1e9)
    attrs = dict(record.attributes or {})
    for key in (
        semconv.USAGE_ID,
        semconv.GEN_AI_OPERATION_NAME,
        semconv.GEN_AI_PROVIDER_NAME,
        semconv.GEN_AI_REQUEST_MODEL,
        semconv.GEN_AI_RESPONSE_MODEL,
        semconv.PURPOSE,
        semconv.TENANT,
        semconv.ORG,
        semconv.CONTEXT,
        semconv.ATTEMPT,
        semconv.FALLBACK_DEPTH,
        semconv.COST_USD,
        semconv.PRICE_SOURCE,
        semconv.ESTIMATED,
        semconv.OUTCOME,
        semconv.LATENCY_MS,
    ):
        assert key in attrs, key
    assert isinstance(attrs[semconv.COST_USD], str)
    Decimal(attrs[semconv.COST_USD])  # a decimal string, exact
    assert attrs[semconv.BUDGET_CAP_USD] == "2.5"


def test_attempt_span_is_client_under_an_internal_parent_with_the_outcome() -> None:
    r = rig(FakeChatModel(responses={"reasoning": [Fail.server_error(), "ok"]}))

    r.plane.chat_model("reasoning").invoke("x")

    sink = r.flush()
    (call,) = sink.call_spans()
    first, second = sink.attempt_spans()
    assert call.kind == SpanKind.INTERNAL
    assert call.name == "comptroller.call reasoning"
    assert call.attributes[semconv.OUTCOME] == "ok"
    assert first.kind == second.kind == SpanKind.CLIENT
    assert first.status.status_code == StatusCode.ERROR
    assert first.attributes[semconv.ERROR_TYPE] == "500"
    assert second.attributes[semconv.SEMCONV_VERSION] == semconv.SEMCONV_PACKAGE_VERSION
    assert all(
        s.parent is not None and s.parent.span_id == call.context.span_id for s in (first, second)
    )


def test_content_is_recorded_only_when_enabled() -> None:
    off = rig(FakeChatModel(responses={"reasoning": "secret answer"}))
    on = rig(FakeChatModel(responses={"reasoning": "secret answer"}), record_content=True)

    off.plane.chat_model("reasoning").invoke("secret prompt")
    on.plane.chat_model("reasoning").invoke("secret prompt")

    (off_span,) = off.flush().attempt_spans()
    (on_span,) = on.flush().attempt_spans()
    assert semconv.GEN_AI_INPUT_MESSAGES not in off_span.attributes
    assert not any("secret" in str(v) for v in off_span.attributes.values())
    assert "secret prompt" in str(on_span.attributes[semconv.GEN_AI_INPUT_MESSAGES])
    assert "secret answer" in str(on_span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES])


def test_event_emitter_drops_none_values_and_uses_the_log_pipeline() -> None:
    sink = InMemorySink()
    telemetry = Telemetry(sink)

    telemetry.emit(
        semconv.EVENT_PROFILE_ACTIVATED, {semconv.PURPOSE: "reasoning", semconv.ACTOR: None}
    )
    telemetry.shutdown()

    (event,) = sink.events(semconv.EVENT_PROFILE_ACTIVATED)
    assert event == {semconv.PURPOSE: "reasoning", "event_name": semconv.EVENT_PROFILE_ACTIVATED}


def test_null_sink_exports_nothing_and_calls_still_work() -> None:
    fake = FakeChatModel(responses={"reasoning": "ok"})
    with ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": profile()}),
        sink=NullSink(),
        providers={"openai": fake.factory},
    ) as plane:
        assert plane.chat_model("reasoning").invoke("x").content == "ok"


def test_default_embedded_sink_lands_the_usage_row_in_the_duckdb_file(data_dir: Path) -> None:
    from comptroller.analytics import connect

    fake = FakeChatModel(responses={"reasoning": "ok"})
    settings = load_settings(model={"reasoning": "openai:gpt-4o-mini"})
    assert settings.telemetry == "embedded"
    with ControlPlane(settings, providers={"openai": fake.factory}) as plane:
        plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support").invoke("x")

    con = connect(settings.db_file, read_only=True)
    try:
        rows = con.execute(
            "select purpose, tenant, input_tokens, cost_usd, price_source from llm_usage"
        ).fetchall()
        spans = con.execute("select name, kind from spans order by name").fetchall()
    finally:
        con.close()
    assert rows == [("reasoning", "acme-eu", 10, Decimal("0.0000045000"), rows[0][4])]
    assert rows[0][4].startswith("genai-prices@")
    assert ("chat gpt-4o-mini", "CLIENT") in [
        (n, str(k).upper().replace("SPAN_KIND_", "")) for n, k in spans
    ]


def test_unsampled_caller_trace_drops_spans_but_never_the_usage_row() -> None:
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    r = rig(FakeChatModel(responses={"reasoning": "ok"}))
    caller = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))

    with trace.use_span(NonRecordingSpan(caller)):
        r.plane.chat_model("reasoning").invoke("x")

    sink = r.flush()
    assert sink.spans() == []
    (record,) = [
        x.log_record for x in sink.log_records() if x.log_record.event_name == semconv.EVENT_USAGE
    ]
    assert record.trace_id == 0xABC
