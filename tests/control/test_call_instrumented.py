"""Beside another GenAI instrumentation, every way of calling is billed once.

An application that also runs OpenTelemetry's openai-v2 instrumentation gets a CLIENT span from
it for each provider call, with the same usage. Its span nests under comptroller's attempt span
(the attempt is the current context while provider code runs, for every driver), so the
collector counts comptroller's usage row and drops the derived one. Before, only `invoke` set
that context, and `ainvoke`, `stream` and `astream` were billed twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Tracer
from usage_db import LiveCollector

from comptroller.config import load_settings
from comptroller.control import ControlPlane, MemoryGuard, ModelRef, ResolvedProfile
from comptroller.control import StaticProfiles as Static
from comptroller.control.testing import FakeChatModel, FakeUsage

USAGE = FakeUsage(input_tokens=120, output_tokens=30)


class _InstrumentedFake(FakeChatModel):
    """A provider SDK as openai-v2 instruments it: one CLIENT span per request, started in
    whatever context is current when the request is made."""

    tracer: Any = None

    def _span(self) -> Any:
        tracer: Tracer = self.tracer
        return tracer.start_span(
            "chat gpt-4o-mini",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.response.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": USAGE.input_tokens,
                "gen_ai.usage.output_tokens": USAGE.output_tokens,
            },
        )

    def _generate(self, messages: list[BaseMessage], *a: Any, **kw: Any) -> ChatResult:
        span = self._span()
        try:
            return super()._generate(messages, *a, **kw)
        finally:
            span.end()

    def _stream(self, messages: list[BaseMessage], *a: Any, **kw: Any) -> Iterator[Any]:
        span = self._span()
        try:
            yield from super()._stream(messages, *a, **kw)
        finally:
            span.end()

    async def _astream(
        self, messages: list[BaseMessage], *a: Any, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        span = self._span()
        try:
            async for chunk in super()._astream(messages, *a, **kw):
                yield chunk
        finally:
            span.end()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[LiveCollector]:
    live = LiveCollector(tmp_path / "ledger.duckdb")
    try:
        yield live
    finally:
        live.stop()


async def test_every_driver_is_billed_once_beside_openai_v2(
    collector: LiveCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.url}/v1/traces"))
    )
    fake = _InstrumentedFake(responses={"reasoning": "a b c"}, usage=USAGE)
    fake.tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2")
    plane = ControlPlane(
        load_settings(telemetry="otlp"),
        resolver=Static(
            {
                "reasoning": ResolvedProfile(
                    purpose="reasoning", model=ModelRef(provider="openai", model="gpt-4o-mini")
                )
            }
        ),
        guard=MemoryGuard(),
        providers={"openai": fake.factory},
    )
    try:
        model = plane.chat_model("reasoning", domain="acme", context="chat")
        model.invoke("go")
        await model.ainvoke("go")
        list(model.stream("go"))
        [chunk async for chunk in model.astream("go")]
        assert plane.flush()
    finally:
        plane.shutdown()
        provider.shutdown()
    assert collector.collector.pipeline.wait_landed(30)

    rows = collector.collector.query(
        "select source, count(*) as calls, sum(input_tokens) as input_tokens "
        "from llm_usage group by source order by source"
    ).to_pylist()
    assert rows == [{"source": "comptroller", "calls": 4, "input_tokens": 4 * 120}]
