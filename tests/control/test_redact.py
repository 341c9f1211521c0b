"""Redaction: configured secrets and key-shaped strings never survive into text or errors."""

from __future__ import annotations

import json
import re
import traceback
import urllib.parse
from typing import Any

import httpx
import openai
import pytest

from comptroller.control._errors import ExhaustedFallbacks, ProviderError
from comptroller.control._redact import MARKER, Redactor, looks_like_secret

KEY = "sk-proj-Ab3/De+f_gh-IJ9kLmNoPqRsTuV"
"""A configured key with characters that JSON and URLs escape ('/', '+', '-')."""


@pytest.fixture
def redactor() -> Redactor:
    return Redactor([KEY])


def _json_escape_every(text: str, chars: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if c in chars else c for c in text)


# --- configured secrets --------------------------------------------------------------------


@pytest.mark.parametrize(
    "shown",
    [
        KEY,
        json.dumps(KEY)[1:-1],
        KEY.replace("/", "\\/"),  # JSON may escape '/'
        _json_escape_every(KEY, "-"),  # some characters \\u-escaped, the rest not
        _json_escape_every(KEY, "AbDe"),  # upper-case letters escaped, mid-key
        re.sub(
            r"u00[0-9a-f]{2}", lambda m: "u" + m.group()[1:].upper(), _json_escape_every(KEY, "/")
        ),
        json.dumps(json.dumps({"key": KEY})),  # an error body inside an error body
        urllib.parse.quote(KEY, safe=""),
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(KEY, safe="")),
        urllib.parse.quote_plus(KEY),
        KEY[:10] + urllib.parse.quote(KEY[10:], safe=""),  # only the tail encoded
    ],
)
def test_a_configured_key_is_found_however_it_is_escaped(redactor: Redactor, shown: str) -> None:
    text = f'{{"error": {{"message": "Incorrect API key provided: {shown}."}}}}'
    out = redactor.redact(text)
    assert MARKER in out
    assert KEY not in out
    assert json.dumps(KEY)[1:-1] not in out
    assert urllib.parse.quote(KEY, safe="") not in out
    for fragment in ("Ab3", "IJ9kLmNoPqRsTuV"):
        assert fragment not in out
    assert out.startswith('{"error": {"message": "Incorrect API key provided: ')


def test_a_secret_without_a_key_shape_is_redacted_once_configured() -> None:
    plain = "hunter2-correct-horse"
    assert not looks_like_secret(plain)
    redactor = Redactor()
    assert redactor.redact(f"token {plain} refused") == f"token {plain} refused"
    redactor.add(plain)
    assert redactor.redact(f"token {plain} refused") == f"token {MARKER} refused"


def test_short_or_empty_secrets_are_ignored_and_repr_hides_secrets() -> None:
    redactor = Redactor(["", "abc", None])  # type: ignore[list-item]
    assert redactor.redact("abc abc") == "abc abc"
    redactor.add(KEY)
    assert repr(redactor) == "Redactor(1 secrets)"
    assert KEY not in repr(redactor)


def test_the_longest_of_overlapping_secrets_wins() -> None:
    redactor = Redactor(["secret-one", "secret-one-and-more"])
    assert redactor.redact("x secret-one-and-more y") == f"x {MARKER} y"


# --- shapes of provider keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("key sk-abcdefghijklmnopqrstuvwx rejected", "key  rejected"),
        ("key sk-proj-abcdefghij_KLMNOPQRST-uvwxyz0123 rejected", "key  rejected"),
        ("anthropic sk-ant-api03-abcdefghijklmnop_QRSTUV-wxyz rejected", "anthropic  rejected"),
        ("google AIzaSyA1234567890abcdefghijklmnopqrstuv rejected", "google  rejected"),
        ("aws AKIAIOSFODNN7EXAMPLE rejected", "aws  rejected"),
        ("Authorization: Bearer abc.def.ghi-jkl", "Authorization: Bearer "),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '{"authorization": "Basic "}'),
        (
            "headers: {'Authorization': 'Bearer eyJhbGciOi'}",
            "headers: {'Authorization': 'Bearer '}",
        ),
        ("sent bearer abcdefgh12345678", "sent bearer "),
        ("api_key=abc123secret&model=x", "api_key=&model=x"),
        ('{"api_key": "abc123secret", "model": "x"}', '{"api_key": "", "model": "x"}'),
        ('{\\"api_key\\": \\"abc123secret\\"}', '{\\"api_key\\": \\"\\"}'),
        ("x-api-key: abc123secret", "x-api-key: "),
        ("GET /v1/models?key=AIzaShortButQueryParam&alt=json", "GET /v1/models?key=&alt=json"),
    ],
)
def test_key_shaped_strings_are_redacted_keeping_what_surrounds_them(text: str, kept: str) -> None:
    out = Redactor().redact(text)
    assert out.replace(MARKER, "") == kept
    assert looks_like_secret(text)


@pytest.mark.parametrize(
    "text",
    [
        "openai:gpt-4o-mini failed (HTTP 429): rate limit reached for requests",
        "task-force sk-short ask-me-anything",
        "the key of this dict is missing",
        "model o4-mini, tokens 1234, cost 0.0012 USD",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor([KEY]).redact(text) == text
    assert not looks_like_secret(text)


def test_redaction_stays_linear_on_hostile_text(redactor: Redactor) -> None:
    # Near-misses everywhere: prefixes of the key, escapes, key names without values.
    text = (KEY[:-1] + " ") * 2000 + ("%2" * 5000) + ("api_key " * 2000) + ("sk- " * 5000)
    out = redactor.redact(text + KEY)
    assert out.endswith(MARKER)
    assert out.count(MARKER) == 1


# --- exceptions ----------------------------------------------------------------------------


def _graph(exc: BaseException) -> list[Any]:
    """Every object reachable from `exc` through args, attributes, causes and contexts."""
    seen: list[Any] = []
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if any(item is s for s in seen):
            continue
        seen.append(item)
        if isinstance(item, BaseException):
            stack += [*item.args, *vars(item).values(), item.__cause__, item.__context__]
            stack += list(getattr(item, "exceptions", ()))
            stack.append(item.__traceback__)
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            stack += list(item)
    return seen


def _assert_clean(copy: BaseException, *originals: BaseException) -> None:
    reachable = _graph(copy)
    for original in originals:
        assert not any(item is original for item in reachable)
    text = repr([repr(item) for item in reachable]) + str(copy)
    assert KEY not in text
    assert "IJ9kLmNoPqRsTuV" not in text
    assert all(item is None for item in reachable if hasattr(item, "tb_frame"))


def test_a_provider_error_keeps_its_type_and_attributes(redactor: Redactor) -> None:
    original = ProviderError("openai", "gpt-4o", f"invalid key {KEY}", status=401, retryable=False)
    copy = redactor.redact_exception(original)
    assert type(copy) is ProviderError
    assert isinstance(copy, ProviderError)
    assert (copy.provider, copy.model, copy.status, copy.retryable) == (
        "openai",
        "gpt-4o",
        401,
        False,
    )
    assert str(copy) == f"openai:gpt-4o failed (HTTP 401): invalid key {MARKER}"
    assert copy.detail == f"invalid key {MARKER}"
    _assert_clean(copy, original)


def test_keys_in_nested_causes_and_contexts_are_scrubbed(redactor: Redactor) -> None:
    try:
        try:
            try:
                raise ValueError(f"bad header Authorization: Bearer {KEY}")
            except ValueError as inner:
                raise KeyError({"api_key": KEY}) from inner
        except KeyError:
            raise RuntimeError("provider call failed") from None
    except RuntimeError as exc:
        original = exc
    assert original.__context__ is not None  # suppressed, but still reachable
    copy = redactor.redact_exception(original)
    assert type(copy) is RuntimeError
    assert copy.__suppress_context__
    assert isinstance(copy.__context__, KeyError)
    assert isinstance(copy.__context__.__cause__, ValueError)
    assert str(copy.__context__.__cause__) == f"bad header Authorization: Bearer {MARKER}"
    assert copy.__context__.args == ({"api_key": MARKER},)
    _assert_clean(copy, original, original.__context__, original.__context__.__cause__)


def test_a_real_openai_error_loses_its_request_and_response(redactor: Redactor) -> None:
    request = httpx.Request(
        "POST",
        "https://api.openai.com/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    body = {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}
    response = httpx.Response(401, request=request, json={"error": body})
    original = openai.AuthenticationError(
        f"Error code: 401 - {response.json()}", response=response, body=body
    )
    copy = redactor.redact_exception(original, provider="openai", model="gpt-4o")
    assert type(copy) is openai.AuthenticationError
    assert copy.status_code == 401
    assert copy.code == "invalid_api_key"
    assert copy.body == {
        "message": f"Incorrect API key provided: {MARKER}",
        "code": "invalid_api_key",
    }
    assert copy.response is None
    assert copy.request is None
    assert MARKER in str(copy)
    _assert_clean(copy, original)


class _NeedsTheResponse(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__()
        self.response = response

    def __str__(self) -> str:
        return f"upstream said: {self.response.text}"


class _Response:
    def __init__(self, text: str) -> None:
        self.text = text


def test_an_exception_that_cannot_be_rebuilt_becomes_a_provider_error(
    redactor: Redactor,
) -> None:
    original = _NeedsTheResponse(_Response(f"bad key {KEY}"))
    copy = redactor.redact_exception(original, provider="acme-llm", model="m1")
    assert type(copy) is ProviderError
    assert (
        str(copy)
        == f"acme-llm:m1 failed (no response): _NeedsTheResponse: upstream said: bad key {MARKER}"
    )
    _assert_clean(copy, original)


def test_slotted_exception_falls_back_and_notes_are_scrubbed(redactor: Redactor) -> None:
    class Slotted(Exception):
        __slots__ = ("extra",)

    original = Slotted(f"key {KEY}")
    original.add_note(f"while calling with {KEY}")
    copy = redactor.redact_exception(original)
    assert str(copy).endswith(f"key {MARKER}")
    assert copy.__notes__ == [f"while calling with {MARKER}"]
    _assert_clean(copy, original)


def test_every_attempt_of_an_exception_group_is_scrubbed(redactor: Redactor) -> None:
    first = ProviderError("openai", "gpt-4o", f"key {KEY}", status=401)
    second = ProviderError("openai", "gpt-4o-mini", f"key {urllib.parse.quote(KEY)}", status=401)
    original = ExhaustedFallbacks("every model failed", [first, second])
    copy = redactor.redact_exception(original)
    assert type(copy) is ExhaustedFallbacks
    assert isinstance(copy, ExhaustedFallbacks)
    assert [type(e) for e in copy.exceptions] == [ProviderError, ProviderError]
    assert [e.status for e in copy.exceptions] == [401, 401]  # type: ignore[attr-defined]
    _assert_clean(copy, original, first, second)


def test_a_chain_that_loops_terminates(redactor: Redactor) -> None:
    a = ValueError(f"a {KEY}")
    b = ValueError("b")
    a.__context__ = b
    b.__context__ = a
    copy = redactor.redact_exception(a)
    assert KEY not in str(copy)
    _assert_clean(copy, a, b)


def test_the_copy_raised_after_the_except_block_keeps_the_original_unreachable(
    redactor: Redactor,
) -> None:
    def call() -> None:
        raise ProviderError("openai", "gpt-4o", f"bad key {KEY}", status=401)

    def guarded() -> None:
        clean = None
        try:
            call()
        except ProviderError as exc:
            clean = redactor.redact_exception(exc)
        if clean is not None:
            raise clean

    with pytest.raises(ProviderError) as info:
        guarded()
    assert info.value.__context__ is None
    assert KEY not in "".join(traceback.format_exception(info.value))


def test_exception_leaks_looks_through_the_whole_chain(redactor: Redactor) -> None:
    clean = RuntimeError("the model answered nonsense")
    assert not redactor.exception_leaks(clean)
    inner = ValueError("upstream said: " + urllib.parse.quote(KEY, safe=""))
    outer = RuntimeError("provider call failed")
    outer.__cause__ = inner
    assert redactor.exception_leaks(outer)
    assert not redactor.leaks(str(outer))  # the message alone looks clean
    holder = RuntimeError("failed")
    holder.detail = f"key {KEY}"  # type: ignore[attr-defined]
    assert redactor.exception_leaks(holder)
    group = ExceptionGroup("all failed", [ValueError("ok"), ValueError(f"Bearer {KEY}")])
    assert redactor.exception_leaks(group)
    assert not redactor.exception_leaks(redactor.redact_exception(outer))
