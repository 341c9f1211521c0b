"""A provider key never leaves through an error: not in what the app catches, not in spans,
usage rows or logs, even when the provider echoes it back in its error body."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from comptroller.config import load_settings
from comptroller.control import (
    ControlPlane,
    ExhaustedFallbacks,
    MemoryGuard,
    ModelRef,
    ProviderError,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control.testing import FakeClock, InMemorySink

KEY = "sk-proj-Zq4o1kS3cr3tV4lu3Th4tMustN3v3rL34k0123456789"


class _EchoingProvider(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that refuses every request and echoes the key it got,
    JSON-escaped, the way real providers' "incorrect API key" errors do."""

    status = 401

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        body = json.dumps(
            {
                "error": {
                    "message": f"Incorrect API key provided: {key}. Authorization: Bearer {key}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        ).replace("-", "\\u002d")
        payload = body.encode()
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[401, 503])
def provider(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_EchoingProvider,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _chain(exc: BaseException | None, depth: int = 0) -> Iterator[BaseException]:
    """`exc`, its causes and contexts, and the members of exception groups among them."""
    if exc is None or depth > 20:
        return
    yield exc
    for member in getattr(exc, "exceptions", ()):
        yield from _chain(member, depth + 1)
    yield from _chain(exc.__cause__, depth + 1)
    if exc.__context__ is not exc.__cause__:
        yield from _chain(exc.__context__, depth + 1)


async def test_a_key_echoed_in_an_error_body_reaches_no_exception_span_row_or_log(
    provider: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    sink = InMemorySink()
    clock = FakeClock()
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles(
            {
                "reasoning": ResolvedProfile(
                    purpose="reasoning",
                    model=ModelRef(provider="openai", model="gpt-4o-mini"),
                    base_url=provider,
                )
            }
        ),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        retry_policy=RetryPolicy(max_retries=0),
    )
    model = plane.chat_model("reasoning")
    caught: list[BaseException] = []
    for call in (
        lambda: model.invoke("hi"),
        lambda: list(model.stream("hi")),
    ):
        with pytest.raises((ProviderError, ExhaustedFallbacks)) as info:
            call()
        caught.append(info.value)
    with pytest.raises((ProviderError, ExhaustedFallbacks)) as info:
        await model.ainvoke("hi")
    caught.append(info.value)
    assert plane.flush()

    texts: list[str] = []
    for error in caught:
        for link in _chain(error):
            texts += [str(link), repr(link), repr(link.args), repr(vars(link))]
        texts.append("".join(traceback.format_exception(error)))
    for span in sink.spans():
        texts += [repr(span.status.description), repr(dict(span.attributes or {}))]
    texts += [repr(row) for row in sink.usage_rows()]
    texts.append(caplog.text)
    leaked = [text for text in texts if KEY in text or KEY.replace("-", "\\u002d") in text]
    assert not leaked
    # The errors still say what went wrong, with the key blanked out.
    assert any("Incorrect API key provided: [REDACTED]" in text for text in texts)
