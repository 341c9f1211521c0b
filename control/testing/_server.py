from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from comptroller.control.testing import _replies
from comptroller.control.testing._http_server import LocalHttpServer

ReplyKind = Literal["ok", "rate_limited", "server_error", "truncated_stream", "quota_exhausted"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerReply:
    """One scripted answer of `FakeOpenAIServer` (see the class methods)."""

    kind: ReplyKind = "ok"
    status: int = 200
    retry_after_s: float | None = None
    content: str | None = None
    """Text of the answer (default: the model behaviour's content)."""

    @classmethod
    def ok(cls, content: str | None = None) -> ServerReply:
        """A normal answer."""
        return cls(content=content)

    @classmethod
    def rate_limited(cls, retry_after_s: float | None = 1.0) -> ServerReply:
        """HTTP 429 with `Retry-After`."""
        return cls(kind="rate_limited", status=429, retry_after_s=retry_after_s)

    @classmethod
    def server_error(cls, status: int = 500) -> ServerReply:
        """An HTTP error with status `status`: 5xx by default, any other to script one
        (401 for an expired token, 400 for a refused request)."""
        return cls(kind="server_error", status=status)

    @classmethod
    def quota_exhausted(cls) -> ServerReply:
        """HTTP 429 with `insufficient_quota` (not retryable)."""
        return cls(kind="quota_exhausted", status=429)

    @classmethod
    def truncated_stream(cls) -> ServerReply:
        """A stream cut before its final chunk and usage (a plain 200 when not streaming)."""
        return cls(kind="truncated_stream")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelBehaviour:
    """How the fake server answers for one model."""

    content: str | Callable[[Mapping[str, Any]], str] = "Hello from the fake OpenAI server."
    """The answer, or a function of the request JSON."""
    prompt_tokens: int | None = None
    """Reported prompt tokens (default: ~ 1 per 4 characters of the messages)."""
    completion_tokens: int | None = None
    """Reported completion tokens (default: words of the answer plus `reasoning_tokens`:
    inclusive, as OpenAI reports them)."""
    cached_tokens: int = 0
    """Reported `prompt_tokens_details.cached_tokens`."""
    reasoning_tokens: int = 0
    """Reported `completion_tokens_details.reasoning_tokens`."""
    cache_write_tokens: int = 0
    """Reported `prompt_tokens_details.cache_write_tokens`."""
    audio_prompt_tokens: int = 0
    """Reported `prompt_tokens_details.audio_tokens` (part of the prompt tokens)."""
    audio_completion_tokens: int = 0
    """Reported `completion_tokens_details.audio_tokens` (part of the completion tokens)."""
    service_tier: str | None = None
    """Reported `service_tier` of the answer and of every streamed chunk (`flex`,
    `priority`, `default`, …); None: not reported."""
    latency_s: float = 0.0
    """Delay before answering (and between streamed chunks, divided by their number)."""
    tool_calls: (
        Sequence[Mapping[str, Any]] | Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]]
    ) = ()
    """Tool calls to answer with (`{"name": …, "arguments": {…}}`; without `arguments`, a
    minimal valid instance of the tool's parameters), or a function of the request JSON
    returning them. Made only when the request sends tools, and as its `tool_choice` and
    `parallel_tool_calls` allow; `tool_choice` `required` or a named function makes a call
    even when none is scripted (see `_replies.tool_calls`)."""
    response_model: str | None = None
    """Model reported in the answer (default: the requested one)."""
    embedding_dimensions: int = 8
    """Length of the vectors `/v1/embeddings` answers with (a request's `dimensions` wins)."""
    report_embedding_usage: bool = True
    """Whether `/v1/embeddings` reports `usage` (some OpenAI-compatible servers do not)."""


@dataclass
class _ModelState:
    behaviour: ModelBehaviour
    script: deque[ServerReply] = field(default_factory=deque)


class FakeOpenAIServer(LocalHttpServer):
    """A real OpenAI-compatible HTTP server on 127.0.0.1 (an ephemeral port), for tests.

    Serves `POST /v1/embeddings` (deterministic unit vectors per text, float or base64 as
    asked, usage as `prompt_tokens`) and `POST /v1/chat/completions` (buffered and streamed; with
    `stream_options.include_usage` the usage comes in a final chunk, as OpenAI does), reports
    cached and reasoning tokens, and can be scripted per model: latency, 429 with
    Retry-After, 5xx, quota exhaustion, truncated streams. Answers the request as the API
    does: tool calls when `tools` are sent (obeying `tool_choice` and `parallel_tool_calls`;
    streamed as deltas), JSON valid against a `response_format` JSON schema (or a JSON object
    in JSON mode), cut at `stop` sequences, `n` choices. Runs uvicorn in a background
    thread; use it as a context manager.

    Example:
        >>> with FakeOpenAIServer() as server:  # doctest: +SKIP
        ...     server.behave("gpt-4o-mini", ModelBehaviour(content="hi", cached_tokens=8))
        ...     server.script("gpt-4o-mini", ServerReply.rate_limited(2), ServerReply.ok())
        ...     ChatOpenAI(base_url=server.base_url, api_key="x", model="gpt-4o-mini")
    """

    _thread_name = "fake-openai"
    _backlog = 2048
    _url_path = "/v1"

    def __init__(self, default: ModelBehaviour | None = None, *, keep_alive: bool = False) -> None:
        """Build a server (call `start`, or use it as a context manager).

        Args:
            default: Behaviour of models not configured with `behave`.
            keep_alive: Keep connections open between requests. Off by default: clients
                cache connection pools per base URL (langchain-openai does, process-wide), and
                a pooled connection must not outlive the event loop of the test that opened it.
        """
        self._default = default or ModelBehaviour()
        self._keep_alive = keep_alive
        self._models: dict[str, _ModelState] = {}
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        """Every request body received, in order."""
        self.headers: list[dict[str, str]] = []
        """The headers of every request, in order."""
        super().__init__()
        self._counter = 0

    # -- scripting -------------------------------------------------------------------------

    def behave(self, model: str, behaviour: ModelBehaviour) -> None:
        """Answer requests for `model` with `behaviour`."""
        with self._lock:
            self._state(model).behaviour = behaviour

    def script(self, model: str, *replies: ServerReply) -> None:
        """Answer the next requests for `model` with `replies`, in order, then normally."""
        with self._lock:
            self._state(model).script.extend(replies)

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState(behaviour=self._default)
        return state

    def _next(self, model: str) -> tuple[ModelBehaviour, ServerReply]:
        with self._lock:
            state = self._state(model)
            reply = state.script.popleft() if state.script else ServerReply.ok()
            self._counter += 1
            return state.behaviour, reply

    def request_count(self, model: str | None = None) -> int:
        """Requests received (for `model` only if given)."""
        return sum(1 for body in self.requests if model is None or body.get("model") == model)

    # -- lifecycle -------------------------------------------------------------------------

    def _uvicorn_options(self) -> dict[str, Any]:
        return {"backlog": 2048, "timeout_keep_alive": 30}

    # -- the app ---------------------------------------------------------------------------

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        async def received(
            request: Request,
        ) -> tuple[dict[str, Any], ModelBehaviour, ServerReply, dict[str, str], Response | None]:
            """The request noted and its scripted reply: an error response, or None."""
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                self.headers.append(dict(request.headers))
            model = str(body.get("model", ""))
            behaviour, reply = self._next(model)
            conn = {} if self._keep_alive else {"connection": "close"}
            if behaviour.latency_s:
                await asyncio.sleep(behaviour.latency_s)
            if reply.kind not in ("rate_limited", "server_error", "quota_exhausted"):
                return body, behaviour, reply, conn, None
            headers = dict(conn)
            if reply.retry_after_s is not None:
                headers["retry-after"] = f"{reply.retry_after_s:g}"
            code = "insufficient_quota" if reply.kind == "quota_exhausted" else None
            error = JSONResponse(
                {"error": {"message": f"scripted {reply.kind}", "type": reply.kind, "code": code}},
                status_code=reply.status,
                headers=headers,
            )
            return body, behaviour, reply, conn, error

        async def embeddings(request: Request) -> Response:
            body, behaviour, _, conn, error = await received(request)
            if error is not None:
                return error
            return JSONResponse(_replies.embeddings(body, behaviour), headers=conn)

        async def completions(request: Request) -> Response:
            body, behaviour, reply, conn, error = await received(request)
            if error is not None:
                return error
            answer = self._answer(body, behaviour, reply)
            if not body.get("stream"):
                return JSONResponse(answer, headers=conn)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._sse(
                    answer, behaviour, include_usage, truncated=reply.kind == "truncated_stream"
                ),
                media_type="text/event-stream",
                headers=conn,
            )

        async def models(request: Request) -> Response:
            return JSONResponse(
                {"object": "list", "data": [{"id": m, "object": "model"} for m in self._models]}
            )

        return Starlette(
            routes=[
                Route("/v1/chat/completions", completions, methods=["POST"]),
                Route("/chat/completions", completions, methods=["POST"]),
                Route("/v1/embeddings", embeddings, methods=["POST"]),
                Route("/embeddings", embeddings, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
            ]
        )

    def _answer(
        self, body: Mapping[str, Any], behaviour: ModelBehaviour, reply: ServerReply
    ) -> dict[str, Any]:
        content = reply.content
        if content is None:
            content = behaviour.content(body) if callable(behaviour.content) else behaviour.content
        # Shaped as the request asks: JSON for `response_format`, cut at a `stop` sequence.
        content = _replies.cut_at_stop(_replies.shaped_content(body, content), body.get("stop"))
        scripted = (
            behaviour.tool_calls(body) if callable(behaviour.tool_calls) else behaviour.tool_calls
        )
        calls = _replies.tool_calls(body, scripted)
        choices = max(1, int(body.get("n") or 1))
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
        prompt_tokens = (
            behaviour.prompt_tokens
            if behaviour.prompt_tokens is not None
            else prompt_chars // 4 + 8
        )
        # OpenAI's completion_tokens include the reasoning tokens (inclusive counts).
        completion_tokens = (
            behaviour.completion_tokens
            if behaviour.completion_tokens is not None
            else (max(1, len(content.split())) + behaviour.reasoning_tokens) * choices
        )
        with self._lock:
            self._counter += 1
            number = self._counter
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        finish = "stop"
        if calls:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{number}_{index}",
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": json.dumps(call["arguments"], ensure_ascii=False),
                    },
                }
                for index, call in enumerate(calls)
            ]
            finish = "tool_calls"
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {
                "cached_tokens": behaviour.cached_tokens,
                "audio_tokens": behaviour.audio_prompt_tokens,
                **(
                    {"cache_write_tokens": behaviour.cache_write_tokens}
                    if behaviour.cache_write_tokens
                    else {}
                ),
            },
            "completion_tokens_details": {
                "reasoning_tokens": behaviour.reasoning_tokens,
                "audio_tokens": behaviour.audio_completion_tokens,
            },
        }
        return {
            "id": f"chatcmpl-fake{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": behaviour.response_model or body.get("model"),
            "choices": [
                {"index": index, "message": message, "finish_reason": finish, "logprobs": None}
                for index in range(choices)
            ],
            "usage": usage,
            "system_fingerprint": "fp_fake",
            **({"service_tier": behaviour.service_tier} if behaviour.service_tier else {}),
        }

    async def _sse(
        self,
        answer: Mapping[str, Any],
        behaviour: ModelBehaviour,
        include_usage: bool,
        *,
        truncated: bool,
    ) -> AsyncIterator[bytes]:
        base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")}
        if "service_tier" in answer:
            base["service_tier"] = answer["service_tier"]  # OpenAI repeats it in every chunk
        base["object"] = "chat.completion.chunk"
        if include_usage:
            base["usage"] = None  # as OpenAI: null in every chunk but the last
        choices = answer["choices"]
        message = choices[0]["message"]
        text = message.get("content") or ""
        pieces = (
            [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))]
            if text
            else []
        )

        def chunk(delta: Mapping[str, Any], index: int = 0, finish: str | None = None) -> bytes:
            data = {
                **base,
                "choices": [
                    {
                        "index": index,
                        "delta": dict(delta),
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
            }
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        pause = behaviour.latency_s / max(1, len(pieces)) if behaviour.latency_s else 0.0
        for choice in choices:
            index = choice["index"]
            yield chunk({"role": "assistant", "content": ""}, index)
            for piece in pieces:
                if pause:
                    await asyncio.sleep(pause)
                yield chunk({"content": piece}, index)
            if truncated:
                return
            for position, call in enumerate(message.get("tool_calls") or ()):
                for delta in _tool_call_deltas(position, call):
                    yield chunk({"tool_calls": [delta]}, index)
            yield chunk({}, index, choice["finish_reason"])
        if include_usage:
            data = {**base, "choices": [], "usage": answer["usage"]}
            yield f"data: {json.dumps(data)}\n\n".encode()
        yield b"data: [DONE]\n\n"


def _tool_call_deltas(position: int, call: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A tool call streamed as OpenAI streams it: id, type and name with empty arguments
    first, then the arguments in fragments (clients must join them)."""
    function = call["function"]
    arguments = str(function["arguments"])
    size = max(1, len(arguments) // 3)
    fragments = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    first = {
        "index": position,
        "id": call["id"],
        "type": "function",
        "function": {"name": function["name"], "arguments": ""},
    }
    return [first] + [
        {"index": position, "function": {"arguments": fragment}} for fragment in fragments
    ]


def replace_behaviour(behaviour: ModelBehaviour, **changes: Any) -> ModelBehaviour:
    """A copy of `behaviour` with `changes`."""
    return replace(behaviour, **changes)
