"""Binders: what a chat-model handle applies to each concrete model of the chain.

A handle's tools or output schema are bound by every model of the fallback chain in its own
way (`bind_tools`, `with_structured_output`), so the call path keeps the intent (a binder) and
applies it to whichever model an attempt runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.exceptions import OutputParserException

from comptroller import semconv
from comptroller.control._errors import ModelRefused
from comptroller.control._tokens import estimate_tokens, estimate_tool_tokens

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.runnables import Runnable


class Binder:
    """How a handle turns a concrete chat model into what it invokes (identity by default)."""

    returns_errors = False
    """Validation errors are returned in the result (`include_raw=True`), not raised."""
    tool_tokens = 0
    """Input tokens the bound tools add to every request (counted in the reservation)."""
    max_output_tokens: int | None = None
    """The output cap every request of this binding sends (pydantic-ai's `max_tokens`
    setting), reserved for instead of the profile's."""
    may_estimate = False
    """Results are not chat answers: they may carry usage the provider did not report
    (`usage_estimated`) and describe themselves on the span (`note_result`)."""

    def apply(self, model: BaseChatModel) -> Runnable[Any, Any]:
        return model

    def note_result(self, result: Any, attrs: dict[str, Any]) -> bool:
        """Only asked where `may_estimate`: put what the span says of `result` in `attrs`;
        whether its usage is estimated."""
        return False

    def input_tokens(self, input: Any) -> int:
        """An upper bound of the input tokens a request of `input` is counted (reserved and
        taken from the token bucket before the provider says)."""
        return estimate_tokens(input) + self.tool_tokens

    def split(self, result: Any) -> tuple[AIMessage | None, BaseException | None, Any]:
        """(the raw AI message for usage, a validation error or None, the caller's result)."""
        return result, None, result


class ToolsBinder(Binder):
    """`bind_tools(tools, **kwargs)` on each model of the chain."""

    def __init__(self, tools: Any, kwargs: Mapping[str, Any]) -> None:
        self.tools = tools
        self.kwargs = dict(kwargs)
        # Once per binding: turning the tools into JSON definitions is not for every call.
        self.tool_tokens = estimate_tool_tokens(tools)

    def apply(self, model: BaseChatModel) -> Runnable[Any, Any]:
        return model.bind_tools(self.tools, **self.kwargs)


class StructuredBinder(Binder):
    """`with_structured_output(schema, include_raw=True, **kwargs)` on each model."""

    def __init__(self, schema: Any, include_raw: bool, kwargs: Mapping[str, Any]) -> None:
        self.schema = schema
        self.include_raw = include_raw
        self.returns_errors = include_raw
        self.kwargs = dict(kwargs)

    def apply(self, model: BaseChatModel) -> Runnable[Any, Any]:
        # include_raw always: the raw message carries the usage, and a parse error comes back
        # as a value the call can count for the upgrade policy instead of an opaque raise.
        return model.with_structured_output(self.schema, include_raw=True, **self.kwargs)

    def split(self, result: Any) -> tuple[AIMessage | None, BaseException | None, Any]:
        raw = result.get("raw")
        error = result.get("parsing_error")
        if error is None:
            refusal = getattr(raw, "additional_kwargs", {}).get("refusal")
            if refusal:
                error = ModelRefused(str(refusal))
            elif result.get("parsed") is None:
                error = OutputParserException(
                    "structured output is missing (nothing parsed)",
                    llm_output=str(getattr(raw, "content", "")),
                )
        if not self.include_raw:
            return raw, error, result.get("parsed")
        if error is not None and result.get("parsing_error") is None:
            result = {**result, "parsing_error": error}
        return raw, error, result


class EmbedBinder(Binder):
    """An embeddings route: the model is an `Embedder` (invoked as it is), its input a list
    of texts, its result an `EmbeddingResult` whose vectors the caller gets."""

    may_estimate = True

    def apply(self, model: Any) -> Any:
        return model

    def input_tokens(self, input: Any) -> int:
        from comptroller.control._embedders import upper_bound_tokens

        return upper_bound_tokens(input)

    def split(self, result: Any) -> tuple[Any, BaseException | None, Any]:
        return result, None, result.vectors

    def note_result(self, result: Any, attrs: dict[str, Any]) -> bool:
        """Put what the span says of an embedding result in `attrs` (the vectors' width);
        whether its usage is estimated."""
        vectors = result.vectors
        if vectors:
            attrs[semconv.GEN_AI_EMBEDDINGS_DIMENSION_COUNT] = len(vectors[0])
        return bool(result.usage_estimated)


IDENTITY = Binder()
EMBED = EmbedBinder()
