"""What the fake OpenAI server answers, decided from the request as the real API decides it.

Pure functions of the request body: which tool calls to make (`tools`, `tool_choice`,
`parallel_tool_calls`), the shape of the content (`response_format`), where `stop` cuts it.
"""

from __future__ import annotations

import json
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
