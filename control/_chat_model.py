"""`GuardedChatModel`: the LangChain chat model an application calls.

Every way of calling it — `invoke`, `ainvoke`, `stream`, `astream`, `batch`/`abatch`, the
`generate` family, `stream_events` — runs the one guarded-call flow (`_call`). Tools and
structured output are kept as intents (binders) that each model of the fallback chain
applies its own way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from pydantic import ConfigDict, PrivateAttr

from comptroller.control import _call
from comptroller.control._call import IDENTITY, Binder, Route, StructuredBinder, ToolsBinder

if TYPE_CHECKING:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForLLMRun,
        CallbackManagerForLLMRun,
    )

    from comptroller.control._circuit import CircuitSnapshot

_BINDER = "comptroller_binder"
"""The call keyword under which a binding (`bind_tools`) hands its binder to the model."""


class GuardedChatModel(BaseChatModel):
    """A LangChain chat model whose calls run through a control plane.

    Built by `ControlPlane.chat_model`. Its calls raise the control plane's typed errors
    (`RateLimited`, `BudgetExceeded`, `ExhaustedFallbacks`, …); invalid structured output
    raises what LangChain users catch (`OutputParserException`).

    Example:
        >>> model = plane.chat_model("reasoning", domain="acme-eu", org="acme")  # doctest: +SKIP
        >>> model.bind_tools([get_weather]).invoke("Weather in Paris?")  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    purpose: str
    domain: str | None = None
    org: str | None = None
    context: str | None = None
    _route: Route = PrivateAttr()
    _binder: Binder = PrivateAttr(default=IDENTITY)

    @property
    def _llm_type(self) -> str:
        return "comptroller-guarded"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """The model and provider the call's profile routes to (for tracing)."""
        profile = self._route.prepared().profile
        override = kwargs.get("model")
        params = LangSmithParams(
            ls_provider=profile.model.provider,
            ls_model_name=override if isinstance(override, str) else profile.model.model,
            ls_model_type="chat",
        )
        defaults = profile.defaults
        if defaults.temperature is not None:
            params["ls_temperature"] = defaults.temperature
        if defaults.max_tokens is not None:
            params["ls_max_tokens"] = defaults.max_tokens
        if stop:
            params["ls_stop"] = stop
        return params

    def _call_args(
        self, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Route, Binder, dict[str, Any] | None]:
        # The private attributes are read from pydantic's dict: `self._route` goes through
        # BaseModel.__getattr__, a few µs on every call.
        private = self.__pydantic_private__
        assert private is not None
        if not kwargs and stop is None:
            return private["_route"], private["_binder"], None
        binder = kwargs.pop(_BINDER, None) or private["_binder"]
        if "tools" in kwargs:
            # Tools passed per call (not through bind_tools): bind them for this call.
            tools = kwargs.pop("tools")
            options: dict[str, Any] = {
                k: kwargs.pop(k) for k in ("tool_choice", "strict") if k in kwargs
            }
            binder = ToolsBinder(tools, options)
        if stop is not None:
            kwargs["stop"] = stop
        return private["_route"], binder, kwargs or None

    # The Runnable methods are overridden rather than going through BaseChatModel's
    # generate(): the inner model runs LangChain's callbacks once, with the caller's config,
    # and the wrapper adds no second callback run to every call.

    def invoke(
        self,
        input: Any,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Run one guarded call."""
        route, binder, kw = self._call_args(stop, kwargs)
        result: AIMessage = _call.invoke(route, binder, input, config, kw)
        return result

    async def ainvoke(
        self,
        input: Any,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Run one guarded call asynchronously."""
        route, binder, kw = self._call_args(stop, kwargs)
        result: AIMessage = await _call.ainvoke(route, binder, input, config, kw)
        return result

    def stream(
        self,
        input: Any,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream one guarded call; the stream must end with its usage or it is an error.
        A caller that stops reading is charged what the provider reported so far, else the
        call's reservation."""
        route, binder, kw = self._call_args(stop, kwargs)
        return _call.stream(route, binder, input, config, kw)

    def astream(
        self,
        input: Any,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async twin of `stream`."""
        route, binder, kw = self._call_args(stop, kwargs)
        return _call.astream(route, binder, input, config, kw)

    # BaseChatModel's own entry points (generate, stream_events v3, …) reach these.

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=self.invoke(messages, None, stop=stop, **kwargs))]
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = await self.ainvoke(messages, None, stop=stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self.stream(messages, None, stop=stop, **kwargs):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(_text(chunk), chunk=generation)
            yield generation

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self.astream(messages, None, stop=stop, **kwargs):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                await run_manager.on_llm_new_token(_text(chunk), chunk=generation)
            yield generation

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Bind tools; each concrete model of the chain binds them its own way.

        Returns a `RunnableBinding` of this model, as every LangChain chat model does.
        """
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return RunnableBinding(
            bound=self, kwargs={_BINDER: ToolsBinder(list(tools), kwargs)}, config={}
        )

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """A runnable returning `schema`-shaped output. Invalid output raises
        `OutputParserException` (or comes back in `parsing_error` with `include_raw=True`),
        and refusals and parse errors count for the purpose-upgrade policy."""
        return GuardedStructured(self._route, StructuredBinder(schema, include_raw, kwargs))

    def circuit_states(self) -> list[CircuitSnapshot]:
        """The circuits of this model's control plane."""
        return self._route.core.circuits.snapshots()

    # Token counting is the profile's model's own (a request to the provider's counting
    # endpoint for Anthropic and Gemini, tiktoken for OpenAI): LangChain's generic fallback
    # needs `transformers` and counts with GPT-2's vocabulary, a different model's tokens.
    def _counting_model(self) -> BaseChatModel:
        route = self._route
        model = route.core.runnable(route, route.prepared(), 0, IDENTITY)
        assert isinstance(model, BaseChatModel)  # the identity binder binds nothing
        return model

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of `messages` as the profile's model counts them (not a guarded call:
        no limit, budget or usage row)."""
        return self._counting_model().get_num_tokens_from_messages(messages, tools=tools)

    def get_num_tokens(self, text: str) -> int:
        """Tokens of `text` as the profile's model counts them."""
        return self._counting_model().get_num_tokens(text)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` in the profile's model's vocabulary, where its integration
        has one locally (OpenAI's); others raise as their integration does."""
        return self._counting_model().get_token_ids(text)


def _text(chunk: Any) -> str:
    content = getattr(chunk, "content", "")
    return content if isinstance(content, str) else ""


class GuardedStructured(Runnable[Any, Any]):
    """The runnable of `GuardedChatModel.with_structured_output`."""

    def __init__(self, route: Route, binder: StructuredBinder) -> None:
        self._route = route
        self._binder = binder

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run one guarded structured call."""
        return _call.invoke(self._route, self._binder, input, config, kwargs or None)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async twin of `invoke`."""
        return await _call.ainvoke(self._route, self._binder, input, config, kwargs or None)
