"""What the fake OpenAI server answers, decided from the request as the real API decides it.

Pure functions of the request body: which tool calls to make (`tools`, `tool_choice`,
`parallel_tool_calls`), the shape of the content (`response_format`), where `stop` cuts it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from comptroller.control.testing._json_instance import minimal_instance


def tool_calls(
    body: Mapping[str, Any], scripted: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The tool calls answering `body`: `{"name": …, "arguments": {…}}` each.

    `scripted` calls (a call without `arguments` gets a minimal valid instance of the tool's
    parameters) are made when tools are sent, and `tool_choice` is obeyed: `none` makes no
    call, `required` makes at least one, a named function is the one called. With `auto` a
    conversation that ends with tool results is answered in text, as a model does once it
    has what it asked for. `parallel_tool_calls: false` keeps the first call only.
    """
    functions = {
        str(tool["function"]["name"]): tool["function"]
        for tool in body.get("tools") or ()
        if tool.get("type") == "function" and "function" in tool
    }
    if not functions:
        return []
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return []
    calls = [dict(call) for call in scripted]
    if isinstance(choice, Mapping):
        name = str(choice.get("function", {}).get("name"))
        calls = [call for call in calls if call.get("name") == name] or [{"name": name}]
    elif choice == "required":
        calls = calls or [{"name": next(iter(functions))}]
    elif _answers_tool_results(body):
        return []
    if body.get("parallel_tool_calls") is False:
        calls = calls[:1]
    for call in calls:
        if "arguments" not in call:
            parameters = functions.get(str(call["name"]), {}).get("parameters") or {}
            call["arguments"] = minimal_instance(parameters)
    return calls


def _answers_tool_results(body: Mapping[str, Any]) -> bool:
    messages: list[Mapping[str, Any]] = list(body.get("messages") or [])
    return bool(messages) and messages[-1].get("role") == "tool"


def shaped_content(body: Mapping[str, Any], content: str) -> str:
    """`content` as `response_format` asks: JSON valid against a `json_schema` (the content
    itself when it is JSON, so a test can script an answer, valid or not), a JSON object for
    `json_object`, else the text unchanged."""
    response_format = body.get("response_format") or {}
    kind = response_format.get("type")
    if kind == "json_schema":
        if _json(content) is not _NOT_JSON:
            return content
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return json.dumps(minimal_instance(schema))
    if kind == "json_object":
        if isinstance(_json(content), dict):
            return content
        return json.dumps({"content": content})
    return content


_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def cut_at_stop(content: str, stop: str | Sequence[str] | None) -> str:
    """`content` up to (not including) the first of the `stop` sequences, as OpenAI cuts."""
    sequences = [stop] if isinstance(stop, str) else list(stop or ())
    found = [content.find(s) for s in sequences if s and s in content]
    return content[: min(found)] if found else content


def embeddings(body: Mapping[str, Any], behaviour: Any) -> dict[str, Any]:
    """The answer of `/v1/embeddings`: one deterministic unit vector per input text (the same
    text always gets the same vector), float or base64-packed float32 as `encoding_format`
    asks, and the usage as OpenAI reports it (`prompt_tokens`, ~1 per 4 characters, or the
    behaviour's `prompt_tokens`)."""
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else list(raw or ())
    width = int(body.get("dimensions") or behaviour.embedding_dimensions)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        vector = _unit_vector(str(text), width)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{width}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = (
        behaviour.prompt_tokens
        if behaviour.prompt_tokens is not None
        else sum(len(str(text)) // 4 + 1 for text in texts)
    )
    answer: dict[str, Any] = {
        "object": "list",
        "data": data,
        "model": behaviour.response_model or body.get("model"),
    }
    if behaviour.report_embedding_usage:
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return answer


def _unit_vector(text: str, width: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < 2 * width:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [
        int.from_bytes(digest[2 * i : 2 * i + 2], "big") / 65535.0 - 0.5 for i in range(width)
    ]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
