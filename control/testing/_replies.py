"""What the fake provider servers answer, decided from the request as the real API decides it.

Pure functions of the request body: which tool calls to make (OpenAI's `tools`,
`tool_choice`, `parallel_tool_calls`; Anthropic's `tools`, `tool_choice`; Gemini's
`functionDeclarations`, `toolConfig`), the shape of the content (a JSON schema asked for),
where `stop` cuts it.
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


def require_not_negative(behaviour: object, names: Sequence[str]) -> None:
    """Refuse a behaviour whose counts or latency are negative (a test's typo, which would
    otherwise surface as an SDK error far from it).

    Raises:
        ValueError: Naming the field and its value.
    """
    for name in names:
        value = getattr(behaviour, name)
        if value is not None and value < 0:
            raise ValueError(f"{type(behaviour).__name__}.{name} must be >= 0, got {value}")


def tool_calls(
    body: Mapping[str, Any], scripted: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The tool calls answering an OpenAI `body`: `{"name": …, "arguments": {…}}` each.

    `scripted` calls (a call without `arguments` gets a minimal valid instance of the tool's
    parameters) are made when tools are sent, and `tool_choice` is obeyed: `none` makes no
    call, `required` makes at least one, a named function is the one called. With `auto` a
    conversation that ends with tool results is answered in text, as a model does once it
    has what it asked for. `parallel_tool_calls: false` keeps the first call only.
    """
    functions = {
        str(tool["function"]["name"]): tool["function"].get("parameters") or {}
        for tool in body.get("tools") or ()
        if tool.get("type") == "function" and "function" in tool
    }
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, Mapping):
        choice = {"name": str(choice.get("function", {}).get("name"))}
    return choose_tool_calls(
        functions,
        choice,
        scripted,
        answers_tool_results=_answers_tool_results(body),
        parallel=body.get("parallel_tool_calls") is not False,
    )


ToolChoice = str | Mapping[str, str]
"""`auto`, `none`, `required`, or `{"name": …}` for one named function."""


def choose_tool_calls(
    functions: Mapping[str, Mapping[str, Any]],
    choice: ToolChoice,
    scripted: Sequence[Mapping[str, Any]],
    *,
    answers_tool_results: bool,
    parallel: bool = True,
) -> list[dict[str, Any]]:
    """The tool calls a model makes given the tools it was sent (name → JSON schema of the
    parameters) and the tool choice, whatever the provider's wire format (see `tool_calls`)."""
    if not functions or choice == "none":
        return []
    calls = [dict(call) for call in scripted]
    if isinstance(choice, Mapping):
        name = str(choice.get("name"))
        calls = [call for call in calls if call.get("name") == name] or [{"name": name}]
    elif choice == "required":
        calls = calls or [{"name": next(iter(functions))}]
    elif answers_tool_results:
        return []
    if not parallel:
        calls = calls[:1]
    for call in calls:
        if "arguments" not in call:
            arguments = minimal_instance(functions.get(str(call["name"])) or {})
            # A tool without parameters (no schema, or one without `type`) takes `{}`: the
            # arguments of a call are always an object.
            call["arguments"] = arguments if isinstance(arguments, dict) else {}
    return calls


def _answers_tool_results(body: Mapping[str, Any]) -> bool:
    messages: list[Mapping[str, Any]] = list(body.get("messages") or [])
    return bool(messages) and messages[-1].get("role") == "tool"


def anthropic_tool_calls(
    body: Mapping[str, Any], scripted: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The tool calls answering an Anthropic Messages `body` (`tools`, `tool_choice` of type
    `auto` / `any` / `tool` / `none`, `disable_parallel_tool_use`); a conversation ending
    with `tool_result` blocks is answered in text under `auto`."""
    functions = {
        str(tool["name"]): tool.get("input_schema") or {}
        for tool in body.get("tools") or ()
        # Server tools (web search, code execution) are run by Anthropic, not called back.
        if "name" in tool and tool.get("type", "custom") == "custom"
    }
    raw = body.get("tool_choice") or {"type": "auto"}
    kind = raw.get("type")
    choice: ToolChoice = (
        {"name": str(raw.get("name"))}
        if kind == "tool"
        else {"any": "required", "none": "none"}.get(str(kind), "auto")
    )
    messages: list[Mapping[str, Any]] = list(body.get("messages") or [])
    last = messages[-1].get("content") if messages else None
    answered = isinstance(last, list) and any(
        isinstance(block, Mapping) and block.get("type") == "tool_result" for block in last
    )
    return choose_tool_calls(
        functions,
        choice,
        scripted,
        answers_tool_results=answered,
        parallel=not raw.get("disable_parallel_tool_use", False),
    )


def gemini_function_calls(
    body: Mapping[str, Any], scripted: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The function calls answering a Gemini `generateContent` `body` (`tools[].
    functionDeclarations` with `parameters` or `parametersJsonSchema`, `toolConfig.
    functionCallingConfig` mode `AUTO` / `ANY` / `NONE` / `VALIDATED` and its
    `allowedFunctionNames`); contents ending with `functionResponse` parts are answered in
    text under `AUTO`."""
    functions: dict[str, Mapping[str, Any]] = {}
    for tool in body.get("tools") or ():
        for declaration in tool.get("functionDeclarations") or ():
            schema = declaration.get("parametersJsonSchema") or declaration.get("parameters")
            functions[str(declaration["name"])] = json_schema_of(schema or {})
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = str(config.get("mode") or "AUTO").upper()
    allowed = [str(name) for name in config.get("allowedFunctionNames") or ()]
    if allowed and mode in ("ANY", "VALIDATED"):
        functions = {name: functions[name] for name in allowed if name in functions}
    choice: ToolChoice = "auto"
    if mode == "NONE":
        choice = "none"
    elif mode == "ANY":
        choice = {"name": allowed[0]} if len(allowed) == 1 else "required"
    contents: list[Mapping[str, Any]] = list(body.get("contents") or [])
    parts = contents[-1].get("parts") or [] if contents else []
    answered = any(isinstance(part, Mapping) and "functionResponse" in part for part in parts)
    return choose_tool_calls(functions, choice, scripted, answers_tool_results=answered)


def json_schema_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A Gemini (OpenAPI) schema as JSON Schema: its upper-case type names (`OBJECT`,
    `STRING`) lowered, `nullable` folded into the type; JSON Schema passes unchanged."""

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, Mapping):
            return node
        out = {key: convert(value) for key, value in node.items() if key != "nullable"}
        kind = node.get("type")
        if isinstance(kind, str):
            out["type"] = kind.lower()
            if node.get("nullable"):
                out["type"] = [kind.lower(), "null"]
        return out

    converted: dict[str, Any] = convert(schema)
    return converted


def structured_content(schema: Mapping[str, Any] | None, content: str) -> str:
    """`content` as a model answers under a JSON schema (`schema` None: JSON mode without
    one): the content itself when it is JSON already (so a test can script an answer, valid
    or not), else a minimal valid instance of the schema (a JSON object without one)."""
    if schema is None:
        return content if isinstance(_json(content), dict) else json.dumps({"content": content})
    if _json(content) is not _NOT_JSON:
        return content
    return json.dumps(minimal_instance(schema))


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
