"""A minimal valid instance of a JSON schema: what the fake server answers in structured mode.

Covers what tool parameters and `response_format` schemas use in practice (pydantic's and
LangChain's output): `$ref`/`$defs`, `anyOf`/`oneOf`/`allOf`, `enum`, `const`, `default`,
objects with their required properties, arrays with `minItems`, strings with a length and a
`format`, numbers within their bounds. Strings are never empty: a caller that checks a value
was given (`if args["style"]:`) sees one, as it would from a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_MAX_DEPTH = 32
_STRING = "example"
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
}


def minimal_instance(schema: Mapping[str, Any]) -> Any:
    """A small value valid against `schema` (its required properties only)."""
    return _instance(schema, schema, 0)


def _instance(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return _instance(_resolve(str(schema["$ref"]), root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _instance(_first_not_null(schema[key]), root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(str(part["$ref"]), root) if "$ref" in part else part)
        return _instance(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            name: _instance(properties.get(name, {}), root, depth + 1)
            for name in schema.get("required", ())
        }
    if kind == "array":
        items = schema.get("items") or {}
        return [_instance(items, root, depth + 1) for _ in range(int(schema.get("minItems", 0)))]
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return _integer(schema)
    if kind == "number":
        return _number(schema)
    if kind == "boolean":
        return False
    return None


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        if part and part != "#":
            node = node[part.replace("~1", "/").replace("~0", "~")]
    resolved: Mapping[str, Any] = node
    return resolved


def _first_not_null(options: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    # A model fills an optional value in rather than answering null.
    return next((o for o in options if o.get("type") != "null"), options[0])


def _string(schema: Mapping[str, Any]) -> str:
    text = _FORMATS.get(str(schema.get("format")), _STRING)
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    text = text.ljust(low, "x")
    return text[: int(high)] if high is not None else text


def _integer(schema: Mapping[str, Any]) -> int:
    low = _bound(schema, "minimum", "exclusiveMinimum", math.ceil, +1)
    high = _bound(schema, "maximum", "exclusiveMaximum", math.floor, -1)
    value = 0
    if low is not None and value < low:
        value = int(low)
    if high is not None and value > high:
        value = int(high)
    step = schema.get("multipleOf")
    if step:
        value = math.ceil(value / step) * int(step)
    return value


def _number(schema: Mapping[str, Any]) -> float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    ex_low = schema.get("exclusiveMinimum")
    ex_high = schema.get("exclusiveMaximum")
    value = 0.0
    if low is not None and value < low:
        value = float(low)
    if ex_low is not None and value <= ex_low:
        value = float(ex_low) + (1.0 if ex_high is None else (ex_high - ex_low) / 2)
    if high is not None and value > high:
        value = float(high)
    if ex_high is not None and value >= ex_high:
        value = float(ex_high) - (1.0 if ex_low is None else (ex_high - ex_low) / 2)
    return value


def _bound(
    schema: Mapping[str, Any], inclusive: str, exclusive: str, rounding: Any, nudge: int
) -> int | None:
    if exclusive in schema and not isinstance(schema[exclusive], bool):
        edge = schema[exclusive]
        whole = rounding(edge)
        return int(whole + nudge if whole == edge else whole)
    if inclusive in schema:
        return int(rounding(schema[inclusive]))
    return None
