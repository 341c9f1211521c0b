"""`FakeAnthropicServer`: a real HTTP server speaking Anthropic's Messages API, for tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from comptroller.control.testing import _replies
from comptroller.control.testing._http_server import ScriptedReply, ScriptedServer

_ERROR_TYPES: dict[str, str] = {
    "rate_limited": "rate_limit_error",
    "server_error": "api_error",
    "overloaded": "overloaded_error",
}


class AnthropicReply(ScriptedReply):
    """One scripted answer of `FakeAnthropicServer` (the kinds of `ScriptedReply`, answered with the
    API's own error types and stream events)."""

    __slots__ = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class AnthropicBehaviour:
    """How the fake server answers for one model. Token counts are reported as Anthropic
    does: `input_tokens` excludes cache reads and writes."""

    content: str | Callable[[Mapping[str, Any]], str] = "Hello from the fake Anthropic server."
    """The answer, or a function of the request JSON."""
    input_tokens: int | None = None
    """Reported uncached input tokens (default: ~ 1 per 4 characters of the messages)."""
    output_tokens: int | None = None
    """Reported output tokens (default: words of the answer)."""
    cache_read_tokens: int = 0
    """Reported `cache_read_input_tokens`."""
    cache_write_5m_tokens: int = 0
    """Reported `cache_creation.ephemeral_5m_input_tokens` (part of
    `cache_creation_input_tokens`)."""
    cache_write_1h_tokens: int = 0
    """Reported `cache_creation.ephemeral_1h_input_tokens` (part of
    `cache_creation_input_tokens`)."""
    latency_s: float = 0.0
    """Delay before answering (and between streamed deltas, divided by their number)."""
    response_model: str | None = None
    """Model reported in the answer (default: the requested one)."""
    web_search_requests: int = 0
    """Web searches the answer reports it ran (`usage.server_tool_use.web_search_requests`,
    billed per search on top of the tokens)."""
    tool_calls: (
        Sequence[Mapping[str, Any]] | Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]]
    ) = ()
    """Tool calls to answer with (`{"name": …, "arguments": {…}}`; without `arguments`, a
    minimal valid instance of the tool's `input_schema`), or a function of the request JSON
    returning them: `tool_use` blocks, made only when the request sends `tools` and as its
    `tool_choice` allows (`any` or a named tool makes a call even when none is scripted, as
    `with_structured_output` relies on; `disable_parallel_tool_use` keeps the first)."""

    def __post_init__(self) -> None:
        _replies.require_not_negative(
            self,
            (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_5m_tokens",
                "cache_write_1h_tokens",
                "web_search_requests",
                "latency_s",
            ),
        )


class FakeAnthropicServer(ScriptedServer[AnthropicBehaviour, AnthropicReply]):
    """A real Anthropic Messages API server on 127.0.0.1 (an ephemeral port), for tests.

    Serves `POST /v1/messages`, buffered and streamed (server-sent events `message_start`,
    `content_block_start`/`content_block_delta`/`content_block_stop`, `message_delta` with
    the cumulative usage, `message_stop`, as the API sends them), reports cache reads and
    5-minute / 1-hour cache writes, and can be scripted per model: latency, 429 with
    `retry-after`, 5xx, 529 overloaded, truncated streams. Answers the request as the API
    does: `tool_use` blocks when `tools` are sent (obeying `tool_choice`; streamed as
    `input_json_delta`s), JSON valid against the schema of `output_config.format` (or
    `output_format`), text cut at `stop_sequences`; `POST /v1/messages/count_tokens` counts
    as it would. Point `ChatAnthropic` (or a comptroller
    profile's `base_url`) at `base_url`. Use it as a context manager.

    Example:
        >>> with FakeAnthropicServer() as server:  # doctest: +SKIP
        ...     server.behave("claude-sonnet-4-5", AnthropicBehaviour(cache_read_tokens=900))
        ...     server.script("claude-sonnet-4-5", AnthropicReply.overloaded())
        ...     ChatAnthropic(base_url=server.base_url, api_key="x", model="claude-sonnet-4-5")
    """

    _behaviour = AnthropicBehaviour
    _reply = AnthropicReply
    _thread_name = "fake-anthropic"

    def request_count(self, model: str | None = None) -> int:
        """Requests received (for `model` only if given)."""
        return sum(1 for body in self.requests if model is None or body.get("model") == model)

    # -- lifecycle -------------------------------------------------------------------------

    # -- the app ---------------------------------------------------------------------------

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        async def messages(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                self.headers.append(dict(request.headers))
            behaviour, reply, number = self._next(str(body.get("model", "")))
            # Connections are not kept: a client's pooled connection must not outlive the
            # event loop of the test that opened it.
            conn = {"connection": "close", "request-id": f"req_fake{number}"}
            if behaviour.latency_s:
                await asyncio.sleep(behaviour.latency_s)
            error_type = _ERROR_TYPES.get(reply.kind)
            if error_type is not None:
                headers = dict(conn)
                if reply.retry_after_s is not None:
                    headers["retry-after"] = f"{reply.retry_after_s:g}"
                return JSONResponse(
                    {
                        "type": "error",
                        "error": {"type": error_type, "message": f"scripted {reply.kind}"},
                    },
                    status_code=reply.status,
                    headers=headers,
                )
            answer = _answer(body, behaviour, reply, number)
            if not body.get("stream"):
                return JSONResponse(answer, headers=conn)
            return StreamingResponse(
                _events(answer, behaviour, truncated=reply.kind == "truncated_stream"),
                media_type="text/event-stream",
                headers=conn,
            )

        async def count_tokens(request: Request) -> Response:
            # What `ChatAnthropic.get_num_tokens_from_messages` asks; not a model call, so
            # neither recorded nor scripted.
            body = await request.json()
            with self._lock:
                behaviour = self._state(str(body.get("model", ""))).behaviour
            return JSONResponse(
                {"input_tokens": _input_tokens(body, behaviour)},
                headers={"connection": "close"},
            )

        return Starlette(
            routes=[
                Route("/v1/messages", messages, methods=["POST"]),
                Route("/messages", messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
                Route("/messages/count_tokens", count_tokens, methods=["POST"]),
            ]
        )


def _answer(
    body: Mapping[str, Any], behaviour: AnthropicBehaviour, reply: AnthropicReply, number: int
) -> dict[str, Any]:
    content = reply.content
    if content is None:
        content = behaviour.content(body) if callable(behaviour.content) else behaviour.content
    output_format = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if isinstance(output_format, Mapping) and output_format.get("type") == "json_schema":
        content = _replies.structured_content(output_format.get("schema") or {}, content)
    stop_sequence = _first_stop(content, body.get("stop_sequences"))
    if stop_sequence is not None:
        content = content[: content.index(stop_sequence)]
    scripted = (
        behaviour.tool_calls(body) if callable(behaviour.tool_calls) else behaviour.tool_calls
    )
    calls = _replies.anthropic_tool_calls(body, scripted)
    blocks: list[dict[str, Any]] = [
        {
            "type": "tool_use",
            "id": f"toolu_fake{number}_{index}",
            "name": call["name"],
            "input": call["arguments"],
        }
        for index, call in enumerate(calls)
    ]
    if not calls:
        blocks.append({"type": "text", "text": content})
    input_tokens = _input_tokens(body, behaviour)
    said = " ".join(
        str(block["text"]) if block["type"] == "text" else json.dumps(block["input"])
        for block in blocks
    )
    output_tokens = (
        behaviour.output_tokens
        if behaviour.output_tokens is not None
        else max(1, len(said.split()))
    )
    writes = behaviour.cache_write_5m_tokens + behaviour.cache_write_1h_tokens
    server_tools = (
        {"server_tool_use": {"web_search_requests": behaviour.web_search_requests}}
        if behaviour.web_search_requests
        else {}
    )
    stop_reason = "tool_use" if calls else "stop_sequence" if stop_sequence else "end_turn"
    return {
        "id": f"msg_fake{number}",
        "type": "message",
        "role": "assistant",
        "model": behaviour.response_model or body.get("model"),
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": behaviour.cache_read_tokens,
            "cache_creation_input_tokens": writes,
            "cache_creation": {
                "ephemeral_5m_input_tokens": behaviour.cache_write_5m_tokens,
                "ephemeral_1h_input_tokens": behaviour.cache_write_1h_tokens,
            },
            "service_tier": "standard",
            **server_tools,
        },
    }


def _input_tokens(body: Mapping[str, Any], behaviour: AnthropicBehaviour) -> int:
    """Uncached input tokens of a request: the behaviour's, else ~ 1 per 4 characters."""
    if behaviour.input_tokens is not None:
        return behaviour.input_tokens
    prompt_chars = sum(len(json.dumps(m.get("content") or "")) for m in body.get("messages", []))
    return prompt_chars // 4 + 8


def _first_stop(content: str, stop: Any) -> str | None:
    """The stop sequence the text meets first (Anthropic reports which one), if any."""
    found = [(content.index(s), s) for s in stop or () if isinstance(s, str) and s and s in content]
    return min(found)[1] if found else None


async def _events(
    answer: Mapping[str, Any], behaviour: AnthropicBehaviour, *, truncated: bool
) -> AsyncIterator[bytes]:
    """The answer as the Messages API streams it."""

    def event(name: str, data: Mapping[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    usage = answer["usage"]
    blocks = answer["content"]
    words = sum(len(str(block.get("text", "")).split(" ")) for block in blocks)
    pause = behaviour.latency_s / max(1, words) if behaviour.latency_s else 0.0
    # `message_start` holds the input side (and 1 output token so far), as the API does.
    start = {
        **answer,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    yield event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            text = str(block["text"])
            deltas = [
                {"type": "text_delta", "text": word if i == 0 else " " + word}
                for i, word in enumerate(text.split(" "))
            ]
        else:
            opened = {**block, "input": {}}
            arguments = json.dumps(block["input"], ensure_ascii=False)
            size = max(1, len(arguments) // 3)
            # The arguments in fragments, as the API streams them: clients must join them.
            deltas = [
                {"type": "input_json_delta", "partial_json": arguments[i : i + size]}
                for i in range(0, len(arguments), size)
            ]
        yield event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opened},
        )
        if index == 0:
            yield event("ping", {"type": "ping"})
        for delta in deltas:
            if pause and delta["type"] == "text_delta":
                await asyncio.sleep(pause)
            yield event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            if truncated:
                return
        yield event("content_block_stop", {"type": "content_block_stop", "index": index})
    # The final usage is cumulative; like the API, it carries the cache counts but not the
    # `cache_creation` split by lifetime (that is only in `message_start`).
    final = {
        key: usage[key]
        for key in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        )
    }
    if "server_tool_use" in usage:
        final["server_tool_use"] = usage["server_tool_use"]
    yield event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": answer["stop_reason"],
                "stop_sequence": answer["stop_sequence"],
            },
            "usage": final,
        },
    )
    yield event("message_stop", {"type": "message_stop"})
