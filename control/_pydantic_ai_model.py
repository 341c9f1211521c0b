"""`GuardedPydanticAIModel`: a pydantic-ai `Model` whose requests are guarded LangChain calls.

Imported only by `guarded_pydantic_ai_model` (pydantic-ai is an optional extra). Each request
converts pydantic-ai's messages and parameters to LangChain's and runs the guarded chat model
of a control plane (`ainvoke`, or `astream` for a streamed request), so routing, limits,
budgets, retries, fallbacks, pricing, spans and usage rows are those of the one call flow.
The control plane's errors reach the agent's caller unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.messages import AIMessageChunk
from langchain_core.messages.ai import add_usage
from langchain_core.runnables import RunnableBinding
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    ModelResponseStreamEvent,
    ToolCallPart,
)
from pydantic_ai.models import (
    Model,
    ModelRequestParameters,
    StreamedResponse,
    check_allow_model_requests,
)
from pydantic_ai.profiles import ModelProfile
from pydantic_ai.settings import ModelSettingName, ModelSettings

from comptroller.control import _pydantic_ai_messages as convert
from comptroller.control._call import Binder
from comptroller.control._chat_model import _BINDER
from comptroller.control._provider_names import canonical_provider
from comptroller.control._tokens import estimate_tool_tokens

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage
    from langchain_core.runnables import Runnable
    from pydantic_ai._run_context import RunContext

    from comptroller.control._chat_model import GuardedChatModel

_MAX_BINDINGS = 64
"""Bindings kept per model (an agent's requests mostly repeat a few tool sets and settings)."""


class RequestBinder(Binder):
    """What a request binds on each model of the chain: its tools, settings and native output
    format, each in the form that model's integration takes (`bind_tools`, and keywords
    named as it reads them), so that a fallback to another provider keeps all of them."""

    def __init__(
        self,
        tools: list[dict[str, Any]],
        tool_choice: str | None,
        settings: dict[str, Any],
        response_format: dict[str, Any] | None,
    ) -> None:
        self.tools = tools
        self.tool_choice = tool_choice
        # The output cap is not bound: the call flow reserves it and sends it to each model
        # of the chain under its integration's name, as for any call's own cap.
        self.settings = {k: v for k, v in settings.items() if k != "max_tokens"}
        self.response_format = response_format
        # Once per binding, as `ToolsBinder` does: the tools' tokens are in every request.
        self.tool_tokens = estimate_tool_tokens(tools)
        cap = settings.get("max_tokens")
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            self.max_output_tokens = cap

    def apply(self, model: BaseChatModel) -> Runnable[Any, Any]:
        runnable: Runnable[Any, Any] = model
        if self.tools:
            choice = {} if self.tool_choice is None else {"tool_choice": self.tool_choice}
            runnable = model.bind_tools(self.tools, **choice)
        kwargs = convert.model_kwargs(
            model, self.settings, self.response_format, with_tools=bool(self.tools)
        )
        return runnable.bind(**kwargs) if kwargs else runnable


class GuardedPydanticAIModel(Model):
    """A pydantic-ai model running the guarded call flow of a control plane's chat model.

    Built by `ControlPlane.pydantic_ai_model`. `model_name` and `system` are the profile's
    primary model and provider; a response names the model that answered (a fallback's,
    when the chain fell back).
    """

    _unsupported_file_inputs = frozenset({"document", "audio", "video"})
    unsupported_settings: ClassVar[frozenset[ModelSettingName]] = frozenset(
        {
            "top_k",
            "timeout",
            "max_retries",
            "parallel_tool_calls",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "extra_headers",
            "extra_body",
            "service_tier",
            "citations",
        }
    )

    def __init__(self, chat_model: GuardedChatModel, *, settings: ModelSettings | None = None):
        """Wrap `chat_model` (a `GuardedChatModel` of `ControlPlane.chat_model`)."""
        self._chat_model = chat_model
        self._bindings: dict[str, Runnable[Any, Any]] = {}
        super().__init__(
            settings=settings,
            profile=ModelProfile(supports_json_schema_output=True),
        )

    @property
    def chat_model(self) -> GuardedChatModel:
        """The guarded LangChain chat model every request runs through."""
        return self._chat_model

    @property
    def model_name(self) -> str:
        """The primary model of the profile the purpose resolves to now."""
        return self._chat_model._route.prepared().profile.model.model

    @property
    def system(self) -> str:
        """The provider of the profile's primary model."""
        return self._chat_model._route.prepared().profile.model.provider

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """One guarded call (`ainvoke`) for the agent's request."""
        check_allow_model_requests()
        model_settings, params = self.prepare_request(model_settings, model_request_parameters)
        runnable, lc_messages = self._call(messages, model_settings, params)
        message = await runnable.ainvoke(lc_messages)
        metadata = getattr(message, "response_metadata", None) or {}
        finish, details = convert.finish_reason(metadata)
        model_name = str(metadata.get("model_name") or metadata.get("model") or self.model_name)
        return ModelResponse(
            parts=convert.response_parts(message),
            usage=convert.request_usage(message),
            model_name=model_name,
            provider_name=self._answering_provider(model_name, metadata.get("model_provider")),
            provider_response_id=convert.response_id(message),
            finish_reason=finish,
            provider_details=details,
        )

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        """One guarded streamed call (`astream`) for the agent's request."""
        check_allow_model_requests()
        model_settings, params = self.prepare_request(model_settings, model_request_parameters)
        runnable, lc_messages = self._call(messages, model_settings, params)
        chunks: AsyncIterator[Any] = runnable.astream(lc_messages)
        try:
            # The first chunk is awaited here, so that a refusal (budget, rate limit, open
            # circuits) is raised where the agent opens the stream, not at its first read.
            first = await anext(chunks, None)
            yield GuardedStreamedResponse(
                model_request_parameters=params,
                _model_name=self.model_name,
                _provider_name=self.system,
                _first=first,
                _chunks=chunks,
                _provider_of=self._answering_provider,
            )
        finally:
            # Closing the guarded stream is what settles an attempt its reader left early.
            await _aclose(chunks)

    def _call(
        self,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
    ) -> tuple[Runnable[Any, Any], list[BaseMessage]]:
        lc_messages = convert.langchain_messages(
            messages, self._get_instruction_parts(messages, params)
        )
        return self._runnable(settings, params), lc_messages

    def _runnable(
        self, settings: ModelSettings | None, params: ModelRequestParameters
    ) -> Runnable[Any, Any]:
        tools, choice = convert.bound_tools(settings, params)
        sent = convert.request_settings(settings)
        response_format = convert.response_format(params)
        if not tools and not sent and response_format is None:
            return self._chat_model
        # One binding per tool set, settings and format: each binding is a binder the call
        # path caches its bound models under, and counts the tools' tokens of once.
        key = convert.request_key(tools, choice, sent, response_format)
        bound = self._bindings.get(key)
        if bound is None:
            if len(self._bindings) >= _MAX_BINDINGS:
                self._bindings.clear()
            binder = RequestBinder(tools, choice, sent, response_format)
            bound = self._bindings[key] = RunnableBinding(
                bound=self._chat_model, kwargs={_BINDER: binder}, config={}
            )
        return bound

    def _answering_provider(self, model: str, reported: Any) -> str:
        """The provider of the chain's model that answered, named as its usage row names it
        (LangChain reports its own names: `google_genai`, or `openai` for any compatible
        endpoint)."""
        chain = self._chat_model._route.prepared().chain
        by_model = {ref.provider for ref in chain if model == ref.model}
        if not by_model:
            by_model = {ref.provider for ref in chain if model.startswith(ref.model)}
        if len(by_model) == 1:
            return by_model.pop()
        if reported:
            canonical = canonical_provider(str(reported))
            for ref in chain:
                if canonical_provider(ref.provider) == canonical:
                    return ref.provider
            return canonical
        return self.system


async def _aclose(chunks: AsyncIterator[Any]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


@dataclass
class GuardedStreamedResponse(StreamedResponse):
    """The stream of a guarded `astream`: text and tool-call deltas through the parts manager,
    usage and finish reason from the chunks that carry them."""

    _model_name: str
    _provider_name: str
    _first: Any
    _chunks: AsyncIterator[Any]
    _provider_of: Callable[[str, Any], str]
    _timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    _usage_received: bool | None = field(default=False, init=False)
    _usage_total: Any = field(default=None, init=False)
    _provider_seen: tuple[str, Any] | None = field(default=None, init=False)
    _metadata: dict[str, Any] = field(default_factory=dict, init=False)

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        if self._first is not None:
            first, self._first = self._first, None
            for event in self._map(first):
                yield event
        async for chunk in self._chunks:
            for event in self._map(chunk):
                yield event

    def _map(self, chunk: Any) -> Iterator[ModelResponseStreamEvent]:
        metadata = getattr(chunk, "response_metadata", None)
        if metadata:
            self._metadata.update(metadata)
            self._note_metadata()
        usage = getattr(chunk, "usage_metadata", None)
        if usage:
            total = self._usage_total
            self._usage_total = usage if total is None else add_usage(total, usage)
            totalled = AIMessageChunk(
                content="", usage_metadata=self._usage_total, response_metadata=self._metadata
            )
            self._add_usage(convert.request_usage(totalled), reported=True, cumulative=True)
        text = str(getattr(chunk, "text", "") or "")
        if text:
            yield from self._parts_manager.handle_text_delta(vendor_part_id="content", content=text)
        if not isinstance(chunk, AIMessageChunk):
            # A model without a streaming API of its own answers with one whole message (what
            # LangChain's `astream` falls back to): its tool calls are whole, not chunks.
            for part in convert.response_parts(chunk):
                if isinstance(part, ToolCallPart):
                    yield self._parts_manager.handle_part(
                        vendor_part_id=("tool", part.tool_call_id), part=part
                    )
            return
        for call in chunk.tool_call_chunks:
            yield from self._parts_manager.handle_tool_call_delta_events(
                vendor_part_id=("tool", call.get("index")),
                tool_name=call.get("name") or None,
                args=call.get("args") or None,
                tool_call_id=call.get("id") or None,
                provider_details=convert.call_details(chunk, call.get("id")),
            )

    def _note_metadata(self) -> None:
        metadata = self._metadata
        model = metadata.get("model_name") or metadata.get("model")
        if model:
            self._model_name = str(model)
        provider = metadata.get("model_provider")
        # Most chunks repeat what the first said: the chain is looked up again on a change only.
        seen = (self._model_name, provider)
        if (model or provider) and seen != self._provider_seen:
            self._provider_seen = seen
            self._provider_name = self._provider_of(self._model_name, provider)
        finish, details = convert.finish_reason(metadata)
        if finish is not None or details is not None:
            self.finish_reason, self.provider_details = finish, details
        if metadata.get("id"):
            self.provider_response_id = str(metadata["id"])

    async def close_stream(self) -> None:
        """Close the guarded stream (the control plane charges what was reported so far)."""
        await _aclose(self._chunks)

    @property
    def model_name(self) -> str:
        """The model that answered."""
        return self._model_name

    @property
    def provider_name(self) -> str:
        """The provider of the model that answered."""
        return self._provider_name

    @property
    def provider_url(self) -> None:
        """Not known here: the control plane chooses the endpoint per attempt."""
        return None

    @property
    def timestamp(self) -> datetime:
        """When the stream was opened."""
        return self._timestamp
