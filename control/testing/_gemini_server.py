"""`FakeGeminiServer`: a real HTTP server speaking the Gemini API (`generateContent`), for
tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from comptroller.control.testing import _replies
from comptroller.control.testing._http_server import ScriptedReply, ScriptedServer

_ERROR_STATUS: dict[int, str] = {
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}


class GeminiReply(ScriptedReply):
    """One scripted answer of `FakeGeminiServer` (the kinds of `ScriptedReply`, answered with the
    API's own error types and stream events)."""

    __slots__ = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class GeminiBehaviour:
    """How the fake server answers for one model. Token counts are reported as Gemini does:
    `promptTokenCount` includes the cached tokens, `candidatesTokenCount` excludes the
    thinking tokens."""

    content: str | Callable[[Mapping[str, Any]], str] = "Hello from the fake Gemini server."
    """The answer, or a function of the request JSON."""
    prompt_tokens: int | None = None
    """Reported `promptTokenCount`, cached ones included (default: ~ 1 per 4 characters of
    the contents, plus the cached tokens)."""
    candidates_tokens: int | None = None
    """Reported `candidatesTokenCount` (default: words of the answer)."""
    cached_tokens: int = 0
    """Reported `cachedContentTokenCount` (part of `promptTokenCount`)."""
    thoughts_tokens: int = 0
    """Reported `thoughtsTokenCount` (not part of `candidatesTokenCount`)."""
    latency_s: float = 0.0
    """Delay before answering (and between streamed chunks, divided by their number)."""
    response_model: str | None = None
    """`modelVersion` reported in the answer (default: the requested model)."""
    tool_calls: (
        Sequence[Mapping[str, Any]] | Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]]
    ) = ()
    """Function calls to answer with (`{"name": …, "arguments": {…}}`; without `arguments`,
    a minimal valid instance of the declaration's parameters), or a function of the request
    JSON returning them: `functionCall` parts, made only when the request declares functions
    and as `toolConfig.functionCallingConfig` allows (`ANY`, or one allowed name, makes a
    call even when none is scripted, as `with_structured_output` relies on)."""

    def __post_init__(self) -> None:
        _replies.require_not_negative(
            self,
            (
                "prompt_tokens",
                "candidates_tokens",
                "cached_tokens",
                "thoughts_tokens",
                "latency_s",
            ),
        )


class FakeGeminiServer(ScriptedServer[GeminiBehaviour, GeminiReply]):
    """A real Gemini API server on 127.0.0.1 (an ephemeral port), for tests.

    Serves `POST /v1beta/models/{model}:generateContent` and
    `:streamGenerateContent?alt=sse` (server-sent `GenerateContentResponse` chunks, the last
    with the finish reason), reports `usageMetadata` with cached-content and thinking
    tokens, and can be scripted per model: latency, 429 with `retry-after` (and, as Gemini
    says it, a `google.rpc.RetryInfo` `retryDelay` in the body), 5xx, 529, truncated
    streams. Answers the request as the API does: `functionCall` parts when
    functions are declared (obeying `toolConfig`), JSON valid against
    `generationConfig.responseJsonSchema` / `responseSchema` (a JSON object for
    `responseMimeType: application/json` alone), text cut at `stopSequences`; `:countTokens`
    counts as it would. Point
    `ChatGoogleGenerativeAI(base_url=…)` (or a comptroller profile's `base_url`) at
    `base_url`. Use it as a context manager.

    Example:
        >>> with FakeGeminiServer() as server:  # doctest: +SKIP
        ...     server.behave("gemini-2.5-flash", GeminiBehaviour(thoughts_tokens=300))
        ...     server.script("gemini-2.5-flash", GeminiReply.rate_limited(retry_after_s=2))
        ...     ChatGoogleGenerativeAI(base_url=server.base_url, api_key="x",
        ...                            model="gemini-2.5-flash")
    """

    _behaviour = GeminiBehaviour
    _reply = GeminiReply
    _thread_name = "fake-gemini"

    def __init__(self, default: GeminiBehaviour | None = None) -> None:
        """Build a server (call `start`, or use it as a context manager).

        Args:
            default: Behaviour of models not configured with `behave`.

        Raises:
            TypeError: `default` is not a `GeminiBehaviour`.
        """
        super().__init__(default)
        self.request_models: list[str] = []
        """The model of every request (it is in the path, not the body), in order."""

    def request_count(self, model: str | None = None) -> int:
        """Requests received (for `model` only if given)."""
        with self._lock:
            return sum(1 for name in self.request_models if model is None or name == model)

    # -- the app ---------------------------------------------------------------------------

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        async def generate(request: Request) -> Response:
            model, _, method = str(request.path_params["target"]).partition(":")
            model = model.removeprefix("models/")
            if method == "countTokens":
                # What `ChatGoogleGenerativeAI.get_num_tokens` asks; not a model call, so
                # neither recorded nor scripted.
                counted = await request.json()
                request_body = counted.get("generateContentRequest") or counted
                with self._lock:
                    behaviour = self._state(model).behaviour
                return JSONResponse(
                    {"totalTokens": _prompt_tokens(request_body, behaviour)},
                    headers={"connection": "close"},
                )
            if method not in ("generateContent", "streamGenerateContent"):
                return JSONResponse(
                    {
                        "error": {
                            "code": 404,
                            "message": f"no method {method!r}",
                            "status": "NOT_FOUND",
                        }
                    },
                    status_code=404,
                )
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                self.request_models.append(model)
                self.headers.append(dict(request.headers))
            behaviour, reply, number = self._next(model)
            # Connections are not kept: a client's pooled connection must not outlive the
            # event loop of the test that opened it.
            conn = {"connection": "close"}
            if behaviour.latency_s:
                await asyncio.sleep(behaviour.latency_s)
            if reply.status != 200:
                headers = dict(conn)
                if reply.retry_after_s is not None:
                    headers["retry-after"] = f"{reply.retry_after_s:g}"
                status = _ERROR_STATUS.get(reply.status, "INTERNAL")
                error: dict[str, Any] = {
                    "code": reply.status,
                    "message": f"scripted {reply.kind}",
                    "status": status,
                }
                if reply.retry_after_s is not None:
                    # Gemini says when to retry in the body (google.rpc.RetryInfo); the
                    # header above serves clients that only read Retry-After.
                    error["details"] = [
                        {
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{reply.retry_after_s:g}s",
                        }
                    ]
                return JSONResponse({"error": error}, status_code=reply.status, headers=headers)
            answer = _answer(model, body, behaviour, reply, number)
            if method == "generateContent":
                return JSONResponse(answer, headers=conn)
            return StreamingResponse(
                _chunks(answer, behaviour, truncated=reply.kind == "truncated_stream"),
                media_type="text/event-stream",
                headers=conn,
            )

        return Starlette(
            routes=[
                Route("/v1beta/{target:path}", generate, methods=["POST"]),
                Route("/v1/{target:path}", generate, methods=["POST"]),
            ]
        )


def _answer(
    model: str,
    body: Mapping[str, Any],
    behaviour: GeminiBehaviour,
    reply: GeminiReply,
    number: int,
) -> dict[str, Any]:
    content = reply.content
    if content is None:
        content = behaviour.content(body) if callable(behaviour.content) else behaviour.content
    config: Mapping[str, Any] = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if schema:
        content = _replies.structured_content(_replies.json_schema_of(schema), content)
    elif config.get("responseMimeType") == "application/json":
        content = _replies.structured_content(None, content)
    content = _replies.cut_at_stop(content, config.get("stopSequences"))
    scripted = (
        behaviour.tool_calls(body) if callable(behaviour.tool_calls) else behaviour.tool_calls
    )
    calls = _replies.gemini_function_calls(body, scripted)
    parts: list[dict[str, Any]] = (
        [{"functionCall": {"name": call["name"], "args": call["arguments"]}} for call in calls]
        if calls
        else [{"text": content}]
    )
    said = json.dumps([call["arguments"] for call in calls]) if calls else content
    prompt = _prompt_tokens(body, behaviour)
    candidates = (
        behaviour.candidates_tokens
        if behaviour.candidates_tokens is not None
        else max(1, len(said.split()))
    )
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + behaviour.thoughts_tokens,
    }
    # Gemini leaves the counts out when they are 0.
    if behaviour.cached_tokens:
        usage["cachedContentTokenCount"] = behaviour.cached_tokens
    if behaviour.thoughts_tokens:
        usage["thoughtsTokenCount"] = behaviour.thoughts_tokens
    return {
        "candidates": [
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": usage,
        "modelVersion": behaviour.response_model or model,
        "responseId": f"fake-gemini-{number}",
    }


def _prompt_tokens(body: Mapping[str, Any], behaviour: GeminiBehaviour) -> int:
    """`promptTokenCount` of a request: the behaviour's, else ~ 1 per 4 characters of the
    contents plus the cached tokens."""
    if behaviour.prompt_tokens is not None:
        return behaviour.prompt_tokens
    return len(json.dumps(body.get("contents") or [])) // 4 + 8 + behaviour.cached_tokens


async def _chunks(
    answer: Mapping[str, Any], behaviour: GeminiBehaviour, *, truncated: bool
) -> AsyncIterator[bytes]:
    """The answer as `streamGenerateContent?alt=sse` streams it: one chunk per word (function
    calls in one chunk), each with the prompt counts; the last one with the finish reason
    and the full usage."""

    def chunk(data: Mapping[str, Any]) -> bytes:
        return f"data: {json.dumps(data, ensure_ascii=False)}\r\n\r\n".encode()

    usage = answer["usageMetadata"]
    parts = answer["candidates"][0]["content"]["parts"]
    # Text word by word; function calls whole, in one chunk, as Gemini streams them.
    pieces: list[list[dict[str, Any]]] = (
        [
            [{"text": word if i == 0 else " " + word}]
            for i, word in enumerate(str(parts[0]["text"]).split(" "))
        ]
        if "text" in parts[0]
        else [list(parts)]
    )
    pause = behaviour.latency_s / max(1, len(pieces)) if behaviour.latency_s else 0.0
    head = {key: answer[key] for key in ("modelVersion", "responseId")}
    for i, piece in enumerate(pieces):
        if pause:
            await asyncio.sleep(pause)
        last = i == len(pieces) - 1
        candidate: dict[str, Any] = {
            "content": {"parts": piece, "role": "model"},
            "index": 0,
        }
        if last:
            candidate["finishReason"] = "STOP"
            chunk_usage = usage
        else:
            # The counts so far, cumulative as Gemini sends them.
            chunk_usage = {
                key: usage[key]
                for key in ("promptTokenCount", "cachedContentTokenCount")
                if key in usage
            }
            chunk_usage["totalTokenCount"] = usage["promptTokenCount"]
        yield chunk({"candidates": [candidate], "usageMetadata": chunk_usage, **head})
        if truncated:
            return
