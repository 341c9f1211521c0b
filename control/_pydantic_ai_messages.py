"""pydantic-ai's messages and request parameters as LangChain's, and LangChain's answer back.

Only `_pydantic_ai_model` imports this module (pydantic-ai is an optional extra). Tool
definitions go to LangChain as OpenAI-format dicts, which every LangChain integration's
`bind_tools` accepts; structured output asked for natively goes as an OpenAI-style
`response_format`, which langchain-openai, langchain-anthropic and langchain-google-genai all
translate for their API — so a fallback to another provider's model keeps both. Settings and
the response format are applied per concrete model (`model_kwargs`), in the names each
integration reads.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic_ai.messages import (
    ERROR_OUTCOMES,
    BinaryContent,
    CachePoint,
    FinishReason,
    ImageUrl,
    InstructionPart,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponsePart,
    RetryFeedbackPart,
    SystemPromptPart,
    TextContent,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import (
    ModelRequestParameters,
    _sendable_request_parts,
)
from pydantic_ai.models._tool_choice import resolve_tool_choice
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.usage import RequestUsage

from comptroller.control._usage import usage_of
from comptroller.errors import UsageError

# OpenAI's `finish_reason`, Anthropic's `stop_reason` and Gemini's `finish_reason`, lower-cased.
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_call",
    "function_call": "tool_call",
    "tool_use": "tool_call",
    "content_filter": "content_filter",
    "refusal": "content_filter",
    "safety": "content_filter",
    "recitation": "content_filter",
    "blocklist": "content_filter",
    "prohibited_content": "content_filter",
    "spii": "content_filter",
    "malformed_function_call": "error",
}

_GEMINI_SIGNATURES = "__gemini_function_call_thought_signatures__"
"""Where langchain-google-genai keeps the thought signature of each function call, by call id:
Gemini wants it back with the call (Gemini 3 refuses a call replayed without it)."""
_SIGNATURE = "gemini_thought_signature"
"""The key of a call's signature in its `ToolCallPart.provider_details`."""

_SETTINGS_SENT = ("temperature", "top_p", "max_tokens")
"""The `ModelSettings` sent with a request: every LangChain integration of a fallback chain
reads them (`max_tokens` goes through the call flow, which names it per provider)."""


def langchain_messages(
    messages: Sequence[ModelMessage], instructions: Sequence[InstructionPart] | None
) -> list[BaseMessage]:
    """The conversation as LangChain messages: the leading system prompts and the
    instructions joined into one system message (Anthropic and Gemini take one), then the
    turns in order."""
    converted: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            converted.extend(_request_messages(message))
        else:
            ai = _response_message(message)
            if ai is not None:
                converted.append(ai)
    leading = 0
    while leading < len(converted) and isinstance(converted[leading], SystemMessage):
        leading += 1
    system = [str(m.content) for m in converted[:leading]]
    system.extend(part.content for part in instructions or ())
    body = converted[leading:]
    return [SystemMessage("\n\n".join(system)), *body] if system else body


def _request_messages(message: ModelRequest) -> Iterator[BaseMessage]:
    for part in _sendable_request_parts(message.parts):
        if isinstance(part, SystemPromptPart):
            yield SystemMessage(part.content)
        elif isinstance(part, UserPromptPart):
            yield HumanMessage(_user_content(part))
        elif isinstance(part, ToolReturnPart):
            if part.files:
                raise UsageError(
                    f"tool {part.tool_name!r} returned files: comptroller's pydantic-ai model "
                    "sends a tool's result as text; return text from the tool instead"
                )
            # A failed or retried call goes on the provider's error channel (Anthropic's
            # `is_error`), as pydantic-ai's own models send it.
            yield ToolMessage(
                part.model_response_str(),
                tool_call_id=part.tool_call_id,
                name=part.tool_name,
                status="error" if part.outcome in ERROR_OUTCOMES else "success",
            )
        elif isinstance(part, RetryFeedbackPart):
            # `prepare_messages` (which Agent runs) translates these; a direct request may not.
            yield HumanMessage(part.model_response())
        else:
            raise UsageError(
                f"`{type(part).__name__}` cannot be sent by comptroller's pydantic-ai model: "
                "call `model.prepare_messages(messages)` first, as `Agent` does"
            )


def _user_content(part: UserPromptPart) -> str | list[str | dict[Any, Any]]:
    if isinstance(part.content, str):
        return part.content
    blocks: list[str | dict[Any, Any]] = []
    for item in part.content:
        if isinstance(item, str):
            blocks.append({"type": "text", "text": item})
        elif isinstance(item, TextContent):
            blocks.append({"type": "text", "text": item.content})
        elif isinstance(item, ImageUrl):
            blocks.append({"type": "image", "url": item.url})
        elif isinstance(item, BinaryContent) and item.is_image:
            blocks.append({"type": "image", "base64": item.base64, "mime_type": item.media_type})
        elif isinstance(item, CachePoint):
            continue  # a provider cache hint; the guarded call sends none
        else:
            raise UsageError(
                f"user content of type {type(item).__name__} cannot be sent by comptroller's "
                "pydantic-ai model, which sends text and images only"
            )
    return blocks


def _response_message(message: ModelResponse) -> AIMessage | None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    signatures: dict[str, Any] = {}
    for part in message.parts:
        if isinstance(part, TextPart):
            texts.append(part.content)
        elif isinstance(part, ToolCallPart):
            calls.append(
                {
                    "type": "tool_call",
                    "name": part.tool_name,
                    "args": part.args_as_dict(),
                    "id": part.tool_call_id,
                }
            )
            signature = (part.provider_details or {}).get(_SIGNATURE)
            if signature:
                signatures[part.tool_call_id] = signature
        # Thinking, provider-side tool calls and files are the provider's own state: another
        # model of the chain could not read them back, so they are not replayed.
    if not texts and not calls:
        return None  # an empty answer (the agent retries it): the APIs refuse empty turns
    # Other integrations ignore the signatures; Gemini's sends each back with its call.
    extra = {_GEMINI_SIGNATURES: signatures} if signatures else {}
    return AIMessage(content="\n\n".join(texts), tool_calls=calls, additional_kwargs=extra)


def bound_tools(
    settings: ModelSettings | None, params: ModelRequestParameters
) -> tuple[list[dict[str, Any]], str | None]:
    """The tools to bind (OpenAI-format dicts) and LangChain's `tool_choice` (None: the
    model decides). `any` is what every LangChain integration reads as "call a tool"."""
    choice = resolve_tool_choice(settings, params)
    definitions = list(params.declared_tool_defs.values())
    if choice == "none":
        # Not every integration has a `none` choice; a model without tools calls none.
        return [], None
    if isinstance(choice, tuple):
        mode, names = choice
        definitions = [d for d in definitions if d.name in names]
    else:
        mode = choice
    tools = [_tool(d) for d in definitions]
    if mode != "required" or not tools:
        return tools, None
    return tools, tools[0]["function"]["name"] if len(tools) == 1 else "any"


def _tool(definition: ToolDefinition) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": definition.name,
        "description": definition.description or "",
        "parameters": definition.parameters_json_schema,
    }
    if definition.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def request_settings(settings: ModelSettings | None) -> dict[str, Any]:
    """The settings a request sends, by their LangChain names (`stop_sequences` as `stop`)."""
    sent: dict[str, Any] = {}
    if settings:
        for name in _SETTINGS_SENT:
            if name in settings:
                sent[name] = settings[name]  # type: ignore[literal-required]
        if settings.get("stop_sequences"):
            sent["stop"] = list(settings["stop_sequences"])
    return sent


def response_format(params: ModelRequestParameters) -> dict[str, Any] | None:
    """The OpenAI-style `response_format` of native structured output, if asked for."""
    output = params.output_object
    if params.output_mode != "native" or output is None:
        return None
    schema: dict[str, Any] = {"name": output.name or "final_result", "schema": output.json_schema}
    if output.description:
        schema["description"] = output.description
    if output.strict is not None:
        schema["strict"] = output.strict
    return {"type": "json_schema", "json_schema": schema}


def model_kwargs(
    model: Any,
    sent: Mapping[str, Any],
    response_format: Mapping[str, Any] | None,
    *,
    with_tools: bool,
) -> dict[str, Any]:
    """The call keywords of one concrete model of the chain, in the names it reads.

    langchain-openai sends a `response_format` through the SDK's `parse`, which refuses
    function tools that are not strict, so with tools the format goes in the body as it is
    (`extra_body`), as the API takes it. The output cap is not among them: the call flow
    sends it under each provider's own name.
    """
    kwargs = dict(sent)
    if response_format is not None:
        if with_tools and _parses_response_format(model):
            extra = dict(getattr(model, "extra_body", None) or {})
            kwargs["extra_body"] = {**extra, "response_format": dict(response_format)}
        else:
            kwargs["response_format"] = dict(response_format)
    return kwargs


def _parses_response_format(model: Any) -> bool:
    # By class name: langchain-openai need not be installed for the other providers.
    chat_completions = any(cls.__name__ == "BaseChatOpenAI" for cls in type(model).__mro__)
    return chat_completions and getattr(model, "use_responses_api", None) is not True


def response_parts(message: Any) -> list[ModelResponsePart]:
    """The text, reasoning and tool calls of an AI message as pydantic-ai parts."""
    parts: list[ModelResponsePart] = []
    for block in _reasoning_blocks(message):
        parts.append(ThinkingPart(content=block))
    text = str(getattr(message, "text", "") or "")
    if text:
        parts.append(TextPart(content=text))
    for call in getattr(message, "tool_calls", None) or ():
        parts.append(
            ToolCallPart(
                tool_name=call["name"],
                args=call.get("args") or {},
                tool_call_id=call.get("id") or _tool_call_id(),
                provider_details=call_details(message, call.get("id")),
            )
        )
    for bad in getattr(message, "invalid_tool_calls", None) or ():
        # Arguments that are not JSON go to pydantic-ai as they came: it asks the model to
        # retry with the validation error, as it does for any invalid arguments.
        if bad.get("name"):
            parts.append(
                ToolCallPart(
                    tool_name=bad["name"],
                    args=bad.get("args") or "",
                    tool_call_id=bad.get("id") or _tool_call_id(),
                )
            )
    return parts


def call_details(message: Any, call_id: Any) -> dict[str, Any] | None:
    """What a tool call must carry to be sent back (Gemini's thought signature), if any."""
    extra = getattr(message, "additional_kwargs", None) or {}
    signature = (extra.get(_GEMINI_SIGNATURES) or {}).get(call_id) if call_id else None
    return {_SIGNATURE: signature} if signature else None


def _reasoning_blocks(message: Any) -> Iterator[str]:
    content = getattr(message, "content", None)
    if not isinstance(content, list):
        return
    for block in content:
        if isinstance(block, Mapping) and block.get("type") in ("thinking", "reasoning"):
            text = block.get("thinking") or block.get("reasoning") or ""
            if text:
                yield str(text)


def request_usage(message: Any) -> RequestUsage:
    """The provider-reported usage of an AI message, read as the control plane reads it for
    its usage rows (so the two agree), or an unmeasured request when there is none."""
    usage = usage_of(message)
    if usage is None:
        return RequestUsage(unmeasured_requests=1)
    return RequestUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
        input_audio_tokens=usage.input_audio_tokens,
        cache_audio_read_tokens=usage.cache_audio_read_tokens,
        output_audio_tokens=usage.output_audio_tokens,
    )


def finish_reason(metadata: Mapping[str, Any]) -> tuple[FinishReason | None, dict[str, Any] | None]:
    """pydantic-ai's finish reason for a response's metadata, and the raw one as a detail."""
    raw = metadata.get("finish_reason") or metadata.get("stop_reason")
    if not raw:
        return None, None
    return _FINISH_REASONS.get(str(raw).lower()), {"finish_reason": str(raw)}


def response_id(message: Any) -> str | None:
    """The provider's id of the response (LangChain's own run ids are not one)."""
    metadata = getattr(message, "response_metadata", None) or {}
    found = metadata.get("id") or getattr(message, "id", None)
    if not found or str(found).startswith("lc_"):
        return None
    return str(found)


def request_key(*parts: Any) -> str:
    """A key equal for equal tools, choices, settings and formats (to reuse one binding
    across requests)."""
    return json.dumps(parts, sort_keys=True, default=str)


def _tool_call_id() -> str:
    # A tool call the provider sent without an id still needs one for its result to answer.
    return f"pyd_ai_{uuid.uuid4().hex}"
