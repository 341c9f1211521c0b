"""`FakeOpenAIServer` answers tools, structured output, stop, n and usage as OpenAI does."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

import httpx
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from comptroller.control.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    ModelBehaviour,
)
from comptroller.control.testing._json_instance import minimal_instance

MODEL = "gpt-4o-mini"

_ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "exclusiveMinimum": 0},
                "b": {"type": "integer", "minimum": -5, "maximum": -1},
                "note": {"type": "string"},
            },
            "required": ["a", "b"],
        },
    },
}
_WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


def _post(server: FakeOpenAIServer, **body: Any) -> dict[str, Any]:
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **body}
    response = httpx.post(server.base_url + "/chat/completions", json=request, timeout=10)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def _stream(server: FakeOpenAIServer, **body: Any) -> list[dict[str, Any]]:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        **body,
    }
    text = httpx.post(server.base_url + "/chat/completions", json=request, timeout=10).text
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def _calls(answer: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    message = answer["choices"][0]["message"]
    return [
        (call["function"]["name"], json.loads(call["function"]["arguments"]))
        for call in message.get("tool_calls") or ()
    ]


def _chat(server: FakeOpenAIServer, model: str = MODEL) -> ChatOpenAI:
    return ChatOpenAI(
        model=model, base_url=server.base_url, api_key="fake", max_retries=0, stream_usage=True
    )


# -- tools ------------------------------------------------------------------------------------


def test_required_tool_choice_calls_a_tool_with_arguments_valid_for_its_schema(
    server: FakeOpenAIServer,
) -> None:
    answer = _post(server, tools=[_ADD, _WEATHER], tool_choice="required")

    ((name, args),) = _calls(answer)
    assert name == "add"
    assert args == {"a": 1, "b": -1}  # exclusiveMinimum 0, maximum -1; optional note left out
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["choices"][0]["message"]["content"] is None


def test_named_tool_choice_calls_that_tool_even_when_others_are_scripted(
    server: FakeOpenAIServer,
) -> None:
    server.behave("named", ModelBehaviour(tool_calls=[{"name": "add", "arguments": {"a": 2}}]))
    answer = _post(
        server,
        model="named",
        tools=[_ADD, _WEATHER],
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )

    assert _calls(answer) == [("weather", {"city": "Paris"})]


def test_tool_choice_none_and_auto_without_a_scripted_call_answer_in_text(
    server: FakeOpenAIServer,
) -> None:
    server.behave("chatty", ModelBehaviour(content="just text"))

    for choice in ("none", "auto"):
        answer = _post(server, model="chatty", tools=[_ADD], tool_choice=choice)
        assert _calls(answer) == []
        assert answer["choices"][0]["message"]["content"] == "just text"
        assert answer["choices"][0]["finish_reason"] == "stop"


def test_scripted_calls_are_not_repeated_once_the_tool_results_are_in(
    server: FakeOpenAIServer,
) -> None:
    server.behave("agent", ModelBehaviour(content="Sunny.", tool_calls=[{"name": "weather"}]))
    first = _post(server, model="agent", tools=[_WEATHER])
    (call,) = first["choices"][0]["message"]["tool_calls"]
    messages = [
        {"role": "user", "content": "Weather?"},
        first["choices"][0]["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]

    second = _post(server, model="agent", tools=[_WEATHER], messages=messages)

    assert _calls(first) == [("weather", {"city": "Paris"})]
    assert _calls(second) == []
    assert second["choices"][0]["message"]["content"] == "Sunny."


def test_parallel_calls_unless_parallel_tool_calls_is_false(server: FakeOpenAIServer) -> None:
    two: list[dict[str, Any]] = [
        {"name": "add", "arguments": {"a": 1, "b": -2}},
        {"name": "weather"},
    ]
    server.behave("parallel", ModelBehaviour(tool_calls=two))

    both = _post(server, model="parallel", tools=[_ADD, _WEATHER])
    one = _post(server, model="parallel", tools=[_ADD, _WEATHER], parallel_tool_calls=False)

    assert [name for name, _ in _calls(both)] == ["add", "weather"]
    assert _calls(one) == [("add", {"a": 1, "b": -2})]
    ids = [call["id"] for call in both["choices"][0]["message"]["tool_calls"]]
    assert len(set(ids)) == 2


def test_tool_calls_depend_on_the_request_when_scripted_as_a_function(
    server: FakeOpenAIServer,
) -> None:
    def calls(request: Mapping[str, Any]) -> list[dict[str, Any]]:
        city = "Oslo" if "Norway" in request["messages"][-1]["content"] else "Paris"
        return [{"name": "weather", "arguments": {"city": city}}]

    server.behave("by-request", ModelBehaviour(tool_calls=calls))
    answer = _post(
        server,
        model="by-request",
        tools=[_WEATHER],
        messages=[{"role": "user", "content": "Weather in Norway?"}],
    )

    assert _calls(answer) == [("weather", {"city": "Oslo"})]


def test_streamed_tool_calls_come_as_deltas_that_join_into_the_call(
    server: FakeOpenAIServer,
) -> None:
    server.behave(
        "streamer",
        ModelBehaviour(tool_calls=[{"name": "add", "arguments": {"a": 40, "b": -2}}]),
    )
    chunks = _stream(server, model="streamer", tools=[_ADD])
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", ())]
    first, *fragments = deltas

    assert first["id"]
    assert first["type"] == "function"
    assert first["function"] == {"name": "add", "arguments": ""}
    assert len(fragments) > 1
    assert all(set(d) == {"index", "function"} for d in fragments)
    joined = "".join(d["function"]["arguments"] for d in fragments)
    assert json.loads(joined) == {"a": 40, "b": -2}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    full: AIMessageChunk | None = None
    for chunk in _chat(server, "streamer").bind_tools([add]).stream("40 + -2?"):
        assert isinstance(chunk, AIMessageChunk)
        full = chunk if full is None else full + chunk
    assert full is not None
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 40, "b": -2})]


# -- structured output ------------------------------------------------------------------------


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    postcode: Annotated[str, Field(min_length=5, max_length=5)]


class Person(BaseModel):
    """A person, with every kind of field a schema has."""

    name: str
    age: Annotated[int, Field(gt=17, le=130)]
    height_m: Annotated[float, Field(gt=0, lt=3)]
    favourite: Colour
    kind: Literal["human"]
    address: Address
    previous: Annotated[list[Address], Field(min_length=2)]
    nickname: str | None
    email: str | None = None
    tags: list[str] = []


def test_json_schema_mode_answers_an_instance_of_the_schema(server: FakeOpenAIServer) -> None:
    person = _chat(server).with_structured_output(Person, method="json_schema").invoke("Who?")

    assert isinstance(person, Person)
    assert len(person.previous) == 2
    assert person.name  # strings are never empty


# ChatOpenAI model_dumps the openai SDK's parsed stream chunks, whose `parsed` is typed None.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_json_schema_mode_streams_the_instance_too(server: FakeOpenAIServer) -> None:
    chunks = list(_chat(server).with_structured_output(Address, method="json_schema").stream("?"))

    assert isinstance(chunks[-1], Address)


def test_a_scripted_json_answer_is_sent_as_is_in_json_schema_mode(
    server: FakeOpenAIServer,
) -> None:
    server.behave("scripted-json", ModelBehaviour(content='{"street": 1}'))
    schema = {"name": "Address", "schema": Address.model_json_schema()}

    answer = _post(
        server,
        model="scripted-json",
        response_format={"type": "json_schema", "json_schema": schema},
    )

    assert answer["choices"][0]["message"]["content"] == '{"street": 1}'


def test_json_object_mode_answers_a_json_object(server: FakeOpenAIServer) -> None:
    server.behave("plain", ModelBehaviour(content="not JSON"))
    server.behave("object", ModelBehaviour(content='{"setup": "s"}'))

    wrapped = _post(server, model="plain", response_format={"type": "json_object"})
    kept = _post(server, model="object", response_format={"type": "json_object"})

    assert json.loads(wrapped["choices"][0]["message"]["content"]) == {"content": "not JSON"}
    assert json.loads(kept["choices"][0]["message"]["content"]) == {"setup": "s"}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "integer", "exclusiveMinimum": 2.5}, 3),
        ({"type": "integer", "minimum": 7, "multipleOf": 5}, 10),
        ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, 0.5),
        ({"type": "string", "format": "date"}, "2026-01-01"),
        ({"type": "string", "maxLength": 3}, "exa"),
        ({"type": ["null", "boolean"]}, False),
        ({"anyOf": [{"type": "null"}, {"const": "x"}]}, "x"),
        ({"allOf": [{"$ref": "#/$defs/A"}]}, {"a": 0}),
        ({"type": "array", "items": {"enum": [4, 5]}, "minItems": 1}, [4]),
        ({"default": [1]}, [1]),
    ],
)
def test_minimal_instance_honours_the_schema_keywords(schema: Any, expected: Any) -> None:
    root = {
        **schema,
        "$defs": {
            "A": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        },
    }

    assert minimal_instance(root) == expected


# -- stop, n, usage ---------------------------------------------------------------------------


def test_stop_sequences_cut_the_answer_before_the_first_match(server: FakeOpenAIServer) -> None:
    server.behave("stopper", ModelBehaviour(content="one two three four"))

    cut = _post(server, model="stopper", stop=["four", " three"])
    single = _post(server, model="stopper", stop="two")
    streamed = _stream(server, model="stopper", stop=["three"])

    assert cut["choices"][0]["message"]["content"] == "one two"
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert single["choices"][0]["message"]["content"] == "one "
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed)
    assert text == "one two "


def test_n_answers_n_choices_buffered_and_streamed(server: FakeOpenAIServer) -> None:
    server.behave("multi", ModelBehaviour(content="a b"))

    answer = _post(server, model="multi", n=3)
    chunks = _stream(server, model="multi", n=2)

    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in answer["choices"]} == {"a b"}
    assert answer["usage"]["completion_tokens"] == 6  # every choice's tokens are billed
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finished == [0, 1]


def test_usage_is_in_every_answer_and_streamed_only_when_asked(server: FakeOpenAIServer) -> None:
    server.behave("counted", ModelBehaviour(content="x", prompt_tokens=11, completion_tokens=3))

    buffered = _post(server, model="counted", tools=[_ADD], tool_choice="required")
    with_usage = _stream(server, model="counted", stream_options={"include_usage": True})
    without = _stream(server, model="counted")

    assert buffered["usage"]["total_tokens"] == 14
    *body, final = with_usage
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == 11
    assert all(chunk["usage"] is None for chunk in body)
    assert all("usage" not in chunk for chunk in without)


@pytest.mark.parametrize("server_type", [FakeOpenAIServer, FakeAnthropicServer, FakeGeminiServer])
def test_a_fake_server_refuses_to_be_used_unstarted_or_started_twice(
    server_type: type[FakeOpenAIServer | FakeAnthropicServer | FakeGeminiServer],
) -> None:
    idle = server_type()
    with pytest.raises(RuntimeError, match="is not started"):
        _ = idle.base_url
    with server_type() as running:
        with pytest.raises(RuntimeError, match="is already started"):
            running.start()
        assert running.base_url.startswith(f"http://127.0.0.1:{running.port}")
