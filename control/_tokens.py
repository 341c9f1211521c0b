"""Input-token bounds made before a call, for the budget reservation.

The reservation is `worst_case(input_tokens, max_output_tokens)`: it holds only if the input
estimate is never below what the provider will count. No tokenizer ships offline without a
new dependency, so the estimate is a bound that holds for every byte-level tokenizer instead
of a guess (see `estimate_tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

MESSAGE_FRAMING_TOKENS: Final = 8
"""Tokens a provider adds around each message: OpenAI's chat format adds 3 (start, role,
separator) and 1 for a `name`; the Anthropic and Gemini turn markers are fewer than 8."""
REQUEST_FRAMING_TOKENS: Final = 8
"""Tokens a provider adds once per request (OpenAI primes the reply with 3)."""
IMAGE_TOKENS: Final = 25_600
"""An image part, whatever its size: what the dearest known model counts for one image
(gpt-4o-mini at high detail: 2,833 + 5,667 × 4 tiles = 25,501; gpt-4o: 765; Claude: about
1,600). Its bytes bound nothing (a small PNG can be a large picture), hence a constant."""
TOOL_USE_TOKENS: Final = 512
"""Tokens a provider adds to a request with tools, beside the definitions themselves
(Anthropic's tool-use system prompt: 313–346 tokens)."""

_IMAGE_TYPES: Final = frozenset({"image_url", "image", "input_image"})
_TEXT_KEYS: Final = ("text", "content")


def utf8_len(text: str) -> int:
    """UTF-8 bytes of `text`: `len` for ASCII (no copy), else the encoded length."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def estimate_tokens(value: Any, *, tools: Iterable[Any] | None = None) -> int:
    """An upper bound of the input tokens a provider will count for `value`.

    The bound: a byte-level BPE tokenizer (OpenAI's cl100k/o200k, Llama 3, and SentencePiece
    with byte fallback, as Gemini's) splits the UTF-8 bytes of a text into tokens of at least
    one byte each, so a text never has more tokens than bytes. Each message adds its framing
    (`MESSAGE_FRAMING_TOKENS`), each request `REQUEST_FRAMING_TOKENS`, each image part
    `IMAGE_TOKENS`, bound tools their JSON definitions plus `TOOL_USE_TOKENS`. Bytes are
    loose for English (~4 bytes a token) and tight for CJK (3 bytes a character, ~1 token a
    character): the price of a bound that holds for every script, where the 4-characters-a-
    token guess under-counted Chinese about 3× and let concurrent calls overshoot a budget.

    Cost: `len` of each ASCII string (`str.isascii` is a flag check), one `encode` of others;
    well under the µs of a guard round trip for a short prompt (docs/ARCHITECTURE.md).

    Args:
        value: What the chat model is invoked with: a string, a `PromptValue`, a message,
            a sequence of messages, `(role, content)` tuples or `{"role", "content"}` dicts;
            content as a string or a list of content blocks (text, image, audio, file, tool
            use and results).
        tools: Tool or function definitions bound to the model (anything
            `convert_to_openai_tool` accepts, or their dict definitions).

    Returns:
        Tokens, never fewer than the provider counts for a byte-level tokenizer.
    """
    total = REQUEST_FRAMING_TOKENS + _input(value)
    if tools is not None:
        total += estimate_tool_tokens(tools)
    return total


def estimate_tool_tokens(tools: Iterable[Any]) -> int:
    """An upper bound of the tokens bound tools add to a request (see `estimate_tokens`).

    A tool is counted as the bytes of its OpenAI JSON definition: the providers render the
    same names, types and descriptions more tersely (OpenAI as TypeScript-like signatures).
    Constant per binding: callers may compute it once per bound model.
    """
    definitions = list(tools)
    if not definitions:
        return 0
    total = TOOL_USE_TOKENS
    for tool in definitions:
        total += MESSAGE_FRAMING_TOKENS + utf8_len(_definition_json(tool))
    return total


def _definition_json(tool: Any) -> str:
    if not isinstance(tool, Mapping):
        try:
            from langchain_core.utils.function_calling import convert_to_openai_tool

            tool = convert_to_openai_tool(tool)
        except Exception:  # an unknown shape is counted by its text instead
            return str(tool)
    return json.dumps(tool, ensure_ascii=False, default=str)


def _input(value: Any) -> int:
    if isinstance(value, str):
        # A bare string is sent as one user message.
        return utf8_len(value) + MESSAGE_FRAMING_TOKENS
    to_messages = getattr(value, "to_messages", None)
    if callable(to_messages):  # a PromptValue
        return _messages(to_messages())
    if isinstance(value, list | tuple):
        return _messages(value)
    return _message(value)


def _messages(messages: Iterable[Any]) -> int:
    return sum(_message(message) for message in messages)


def _message(message: Any) -> int:
    total = MESSAGE_FRAMING_TOKENS
    if isinstance(message, str):
        return total + utf8_len(message)
    if _is_role_tuple(message):
        # ("user", "…"): the role is one of the framing tokens, the content is counted.
        return total + _content(message[1])
    if isinstance(message, Mapping):
        # {"role": "user", "content": …, "name": …, "tool_calls": …}: every value counts.
        for key, item in message.items():
            total += _content(item) if key == "content" else _blob(item)
        return total
    if not isinstance(message, BaseMessage):
        content = getattr(message, "content", None)
        return total + (utf8_len(str(message)) if content is None else _content(content))
    total += _content(message.content)
    if message.name:
        total += utf8_len(message.name)
    if isinstance(message, AIMessage):
        # A reply of the history sends its tool calls (name and JSON arguments) again.
        for call in message.tool_calls:
            total += _blob(call["name"]) + _blob(call["args"]) + _blob(call.get("id"))
    elif isinstance(message, ToolMessage):
        total += utf8_len(message.tool_call_id)
    if message.additional_kwargs:
        # Legacy `function_call`, provider extras: counted, never under.
        total += _blob(message.additional_kwargs)
    return total


def _content(content: Any) -> int:
    if isinstance(content, str):
        return utf8_len(content)
    if isinstance(content, list | tuple):
        return sum(_block(block) for block in content)
    return _blob(content)


def _block(block: Any) -> int:
    if isinstance(block, str):
        return utf8_len(block)
    if isinstance(block, Mapping):
        kind = block.get("type")
        if kind in _IMAGE_TYPES:
            return IMAGE_TOKENS
        if kind == "text" or (kind is None and "text" in block):
            return _blob(block.get("text"))
        if kind in ("tool_result", "tool_use", "thinking") or any(k in block for k in _TEXT_KEYS):
            # Nested content (tool results hold blocks of their own), ids, names, inputs.
            return sum(
                _content(item) if key == "content" else _blob(item)
                for key, item in block.items()
                if key != "type"
            )
        # Audio and file parts: their (base64) bytes exceed the tokens providers count.
        return _blob(block)
    return _blob(block)


def _blob(value: Any) -> int:
    """The bytes of every string (and number) in `value`, keys of mappings included."""
    if value is None:
        return 0
    if isinstance(value, str):
        return utf8_len(value)
    if isinstance(value, Mapping):
        return sum(utf8_len(str(key)) + _blob(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(_blob(item) for item in value)
    return utf8_len(str(value))


def _is_role_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
