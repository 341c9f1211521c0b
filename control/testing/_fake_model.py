from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from comptroller.control._call import CallInfo, current_call

FailureKind: TypeAlias = Literal[
    "rate_limited", "server_error", "timeout", "refusal", "invalid_json", "truncated_stream"
]


@dataclass(frozen=True, kw_only=True, slots=True)
class FakeUsage:
    """Token usage a fake response reports (inclusive counts, as providers report them)."""

    input_tokens: int = 10
    output_tokens: int = 5
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def metadata(self) -> dict[str, Any]:
        """As LangChain's `usage_metadata`."""
        meta: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if self.cache_read_tokens or self.cache_write_tokens:
            meta["input_token_details"] = {
                "cache_read": self.cache_read_tokens,
                "cache_creation": self.cache_write_tokens,
            }
        if self.reasoning_tokens:
            meta["output_token_details"] = {"reasoning": self.reasoning_tokens}
        return meta


@dataclass(frozen=True, kw_only=True, slots=True)
class Fail:
    """A scripted failure of the fake model, raised as the real provider SDK would raise it.

    Build with the class methods: `Fail.rate_limited(retry_after_s=2)`, `Fail.server_error()`,
    `Fail.timeout()`, `Fail.refusal()`, `Fail.invalid_json()`, `Fail.truncated_stream()`.
    """

    kind: FailureKind
    retry_after_s: float | None = None
    status: int | None = None
    text: str = ""
    usage: FakeUsage | None = None
    """Usage reported with the failure (refusals and invalid JSON still cost tokens)."""

    @classmethod
    def rate_limited(cls, *, retry_after_s: float | None = 1.0) -> Fail:
        """HTTP 429 with `Retry-After` (openai.RateLimitError)."""
        return cls(kind="rate_limited", retry_after_s=retry_after_s, status=429)

    @classmethod
    def server_error(cls, status: int = 500) -> Fail:
        """HTTP 5xx (openai.InternalServerError)."""
        return cls(kind="server_error", status=status)

    @classmethod
    def timeout(cls) -> Fail:
        """A request timeout (openai.APITimeoutError)."""
        return cls(kind="timeout")

    @classmethod
    def refusal(
        cls, text: str = "I can't help with that.", *, usage: FakeUsage | None = None
    ) -> Fail:
        """The model refuses (an AI message carrying a refusal)."""
        return cls(kind="refusal", text=text, usage=usage or FakeUsage())

    @classmethod
    def invalid_json(cls, text: str = '{"answer": ', *, usage: FakeUsage | None = None) -> Fail:
        """The model answers with output that does not parse."""
        return cls(kind="invalid_json", text=text, usage=usage or FakeUsage())

    @classmethod
    def truncated_stream(cls, text: str = "The answer is") -> Fail:
        """A stream that stops before its final chunk and usage (a broken connection when
        not streaming)."""
        return cls(kind="truncated_stream", text=text)


Reply: TypeAlias = "str | AIMessage | Mapping[str, Any] | Fail"
"""A canned reply: text, a whole AI message, a dict (structured output / tool arguments) or a
scripted failure."""
Responder: TypeAlias = (
    "Reply | Sequence[Reply] | Callable[[list[BaseMessage], CallInfo | None], Reply]"
)


def _request(url: str = "https://fake.invalid/v1/chat/completions") -> Any:
    import httpx2

    return httpx2.Request("POST", url)


def _raise(fail: Fail) -> None:
    import httpx2
    import openai

    if fail.kind in ("rate_limited", "server_error"):
        headers = {}
        if fail.retry_after_s is not None:
            headers["retry-after"] = f"{fail.retry_after_s:g}"
        status = fail.status or (429 if fail.kind == "rate_limited" else 500)
        response = httpx2.Response(status, headers=headers, request=_request())
        body = {"error": {"message": f"scripted {status}", "type": fail.kind}}
        error_cls = openai.RateLimitError if status == 429 else openai.InternalServerError
        raise error_cls(f"Error code: {status} - scripted", response=response, body=body)
    if fail.kind == "timeout":
        raise openai.APITimeoutError(request=_request())
    if fail.kind == "truncated_stream":
        raise httpx2.RemoteProtocolError(
            "peer closed connection without sending complete message body"
        )


class FakeChatModel(BaseChatModel):
    """A chat model double with canned replies keyed by purpose and content class.

    Keys of `responses`, most specific first: `"purpose:content_class"`, `"purpose"`, `"*"`.
    The purpose is the one the guarded call serves (after any upgrade); the content class is
    `content_class(messages)` (default: `"structured"` when tools or a schema are bound,
    else `"text"`). A value is a reply, a sequence of replies (consumed in order, the last
    one repeating) or a callable `(messages, call_info) -> reply`.

    Example:
        >>> fake = FakeChatModel(responses={
        ...     "reasoning": ["first", Fail.rate_limited(retry_after_s=2), "second"],
        ...     "scoring:structured": {"score": 3},
        ... })
        >>> plane.register_provider("fake", fake.factory)  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    responses: dict[str, Any] = Field(default_factory=dict)
    usage: FakeUsage = Field(default_factory=FakeUsage)
    """Usage reported by every successful reply."""
    content_class: Callable[[list[BaseMessage]], str] | None = None
    model_name: str = "fake-model"
    """Reported model when not called through a control plane."""
    _positions: dict[str, int] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: list[tuple[CallInfo | None, list[BaseMessage]]] = PrivateAttr(default_factory=list)
    _tool_names: tuple[str, ...] = PrivateAttr(default=())

    @property
    def _llm_type(self) -> str:
        return "comptroller-fake"

    @property
    def calls(self) -> list[tuple[CallInfo | None, list[BaseMessage]]]:
        """Every call received: (the guarded attempt, the messages)."""
        return self._calls

    def factory(self, spec: Any) -> FakeChatModel:
        """A provider factory serving every model from this fake (register it)."""
        return self

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any
    ) -> Runnable[Any, AIMessage]:
        names = tuple(convert_to_openai_tool(tool)["function"]["name"] for tool in tools)
        bound = self.model_copy()
        bound._positions = self._positions
        bound._lock = self._lock
        bound._calls = self._calls
        bound._tool_names = names
        return bound.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    # -- replies ---------------------------------------------------------------------------

    def _pick(self, messages: list[BaseMessage], info: CallInfo | None, structured: bool) -> Reply:
        purpose = info.purpose if info is not None else "*"
        klass = (
            self.content_class(messages)
            if self.content_class is not None
            else ("structured" if structured else "text")
        )
        for key in (f"{purpose}:{klass}", purpose, f"*:{klass}", "*"):
            if key in self.responses:
                break
        else:
            return "ok"
        value = self.responses[key]
        if callable(value) and not isinstance(value, Fail):
            picked: Reply = value(messages, info)
            return picked
        if isinstance(value, list | tuple):
            with self._lock:
                index = self._positions.get(key, 0)
                self._positions[key] = index + 1
            return value[min(index, len(value) - 1)]  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    def _message(self, messages: list[BaseMessage], **kwargs: Any) -> tuple[AIMessage, Fail | None]:
        info = current_call()
        with self._lock:
            self._calls.append((info, messages))
        structured = bool(self._tool_names) or "tools" in kwargs
        reply = self._pick(messages, info, structured)
        model = info.model if info is not None else self.model_name
        meta = {"model_name": model, "finish_reason": "stop"}
        if isinstance(reply, Fail):
            if reply.kind == "refusal":
                usage = (reply.usage or self.usage).metadata()
                return AIMessage(
                    content="",
                    additional_kwargs={"refusal": reply.text},
                    response_metadata=meta,
                    usage_metadata=usage,
                ), reply
            if reply.kind == "invalid_json":
                usage = (reply.usage or self.usage).metadata()
                invalid = [
                    {
                        "name": name,
                        "args": reply.text,
                        "id": "call_fake",
                        "error": "invalid JSON",
                        "type": "invalid_tool_call",
                    }
                    for name in self._tool_names[:1]
                ]
                return AIMessage(
                    content=reply.text,
                    invalid_tool_calls=invalid,
                    response_metadata=meta,
                    usage_metadata=usage,
                ), reply
            if reply.kind == "truncated_stream":
                return AIMessage(content=reply.text, response_metadata={"model_name": model}), reply
            _raise(reply)
        usage_meta = self.usage.metadata()
        if isinstance(reply, AIMessage):
            message = reply.model_copy()
            if message.usage_metadata is None:
                message.usage_metadata = usage_meta  # type: ignore[assignment]
            message.response_metadata = {**meta, **message.response_metadata}
            return message, None
        if isinstance(reply, Mapping):
            name = self._tool_names[0] if self._tool_names else "answer"
            return AIMessage(
                content="" if self._tool_names else json.dumps(dict(reply)),
                tool_calls=[
                    {"name": name, "args": dict(reply), "id": "call_fake", "type": "tool_call"}
                ]
                if self._tool_names
                else [],
                response_metadata=meta,
                usage_metadata=usage_meta,
            ), None
        return AIMessage(
            content=str(reply),
            response_metadata=meta,
            usage_metadata=usage_meta,
        ), None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message, fail = self._message(messages, **kwargs)
        if fail is not None and fail.kind == "truncated_stream":
            _raise(fail)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, None, **kwargs)

    def _chunks(self, messages: list[BaseMessage], **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        message, fail = self._message(messages, **kwargs)
        text = message.content if isinstance(message.content, str) else str(message.content)
        words = text.split(" ")
        for index, word in enumerate(words):
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=word if index == 0 else " " + word, id=message.id)
            )
        if fail is not None and fail.kind == "truncated_stream":
            return  # no final chunk, no usage: what a dropped connection looks like
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                additional_kwargs=message.additional_kwargs,
                tool_call_chunks=[
                    {
                        "name": c["name"],
                        "args": json.dumps(c["args"]),
                        "id": c["id"],
                        "index": 0,
                        "type": "tool_call_chunk",
                    }
                    for c in message.tool_calls
                ],
                response_metadata=message.response_metadata,
                usage_metadata=message.usage_metadata,
                chunk_position="last",
            )
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks(messages, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, **kwargs):
            yield chunk
