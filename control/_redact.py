"""Redaction of secrets: provider keys never leave comptroller in text or exceptions.

A `Redactor` knows the configured secrets (every credential resolved for a call, keys given
in a `ModelSpec` or the settings) and the shapes of provider keys (OpenAI `sk-…`, Anthropic
`sk-ant-…`, Google `AIza…`, AWS `AKIA…`, bearer tokens, `api_key=…`). A configured secret is
found also when a provider echoes it JSON-escaped (`\\/`, `\\u002d`, doubly escaped) or
URL-encoded (`%2F`), even when only some of its characters are escaped.

`redact_exception` returns a sanitized copy of an exception: same type where that can be
rebuilt from redacted values, else a `ProviderError`; its causes and contexts are sanitized
copies too, so the original (and the HTTP request or response it may hold, with an
`Authorization` header) is not reachable from what the app receives. It runs on the error
path only, and stays linear: escapes are decoded in one pass, then the secrets are found as
literals in one search, then each key shape in one regular-expression pass.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from comptroller.control._errors import ProviderError

MARKER = "[REDACTED]"
MIN_SECRET_LENGTH = 6
"""Shorter configured "secrets" are ignored: redacting them would shred ordinary text."""
_MAX_DEPTH = 8
"""Bound on nested values and exception chains walked (a cycle or a deep chain stops)."""

_KEY_SHAPES = re.compile(
    "|".join(
        (
            r"\bsk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic
            r"\bAIza[0-9A-Za-z_\-]{35}",  # Google API keys
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bgh[pousr]_[A-Za-z0-9]{36,}",  # GitHub tokens
        )
    )
)
# `Authorization: Bearer x`, `"authorization": "Basic x"`: keep the header name and scheme.
_NOT_DONE = r"(?!\[REDACTED\])"  # a value redacted already is left as it is
_AUTH_HEADER = re.compile(
    r"""(?i)(authorization(?:\\*["'])?\s*[:=]\s*(?:\\*["'])?)"""
    r"""((?:bearer|basic|token|apikey)\s+)?"""
    + _NOT_DONE
    + r"""(?!(?:bearer|basic|token|apikey)\s)[^\s"'\\,;}\]]+"""
)
_BEARER = re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}")
# `api_key=x`, `"api_key": "x"`, `x-api-key: x`, `?key=x` (Google's query parameter).
_KEY_VALUE = re.compile(
    r"""(?i)(?=[axscp?&])((?:\b(?:x-)?api[_-]?key|\bx-goog-api-key|\baccess[_-]?token|\bsecret[_-]?key"""
    r"""|\bclient[_-]?secret|\bpassword|[?&]key)(?:\\*["'])?\s*[:=]\s*(?:\\*["'])?)"""
    + _NOT_DONE
    + r"""[^\s"'\\&,;}\]]+"""
)


# Escapes a provider may wrap a key in: JSON `\\u002d` and `\\/` (doubly escaped too), and
# URL percent-encoding. Text is decoded once into a canonical form that keeps, for every
# character, the span of the original it came from; secrets are then found as literals.
_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})|\\+([/\"\\])|((?:%[0-9a-fA-F]{2})+)")


def _canonical(text: str) -> tuple[str, list[int], list[int]]:
    """(decoded text, original start of each decoded char, original end of each)."""
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    done = 0
    for match in _ESCAPE.finditer(text):
        begin, stop = match.span()
        if begin > done:  # literal run: each character maps to itself
            pieces.append(text[done:begin])
            starts.extend(range(done, begin))
            ends.extend(range(done + 1, begin + 1))
        if match.group(1) is not None:
            decoded = chr(int(match.group(1), 16))
        elif match.group(2) is not None:
            decoded = match.group(2)
        else:
            raw = bytes.fromhex(match.group(3).replace("%", ""))
            decoded = raw.decode("utf-8", "replace")
        pieces.append(decoded)
        starts.extend([begin] * len(decoded))
        ends.extend([stop] * len(decoded))
        done = stop
    pieces.append(text[done:])
    starts.extend(range(done, len(text)))
    ends.extend(range(done + 1, len(text) + 1))
    return "".join(pieces), starts, ends


def _literal_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(secrets), key=len, reverse=True)  # the longest secret wins
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def looks_like_secret(text: str) -> bool:
    """Whether `text` holds something shaped like a provider key or a bearer token."""
    return bool(
        _KEY_SHAPES.search(text)
        or _BEARER.search(text)
        or _AUTH_HEADER.search(text)
        or _KEY_VALUE.search(text)
    )


class Redactor:
    """Removes configured secrets and key-shaped strings from text, values and exceptions.

    Thread-safe: `add` may run while other threads redact.

    Args:
        secrets: Secrets known up front (settings keys, `ModelSpec.api_key`s).
        marker: What replaces a secret.

    Example:
        >>> Redactor(["sk-test-123456"]).redact("bad key sk-test-123456")
        'bad key [REDACTED]'
    """

    def __init__(self, secrets: Iterable[str] = (), *, marker: str = MARKER) -> None:
        self.marker = marker
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"  # never the secrets themselves

    def add(self, *secrets: str | None) -> None:
        """Also redact these secrets (None, blanks and very short strings are ignored)."""
        fresh = {s for s in secrets if s and len(s.strip()) >= MIN_SECRET_LENGTH}
        if fresh <= self._secrets:
            return  # the hot case: a secret already known costs one set check
        with self._lock:
            known = self._secrets | fresh
            self._pattern = _literal_pattern(known)
            self._secrets = known

    def redact(self, text: str) -> str:
        """`text` with every secret and key-shaped string replaced by the marker."""
        pattern = self._pattern
        if pattern is not None:
            text = self._redact_secrets(pattern, text)
        text = _KEY_SHAPES.sub(self.marker, text)
        text = _AUTH_HEADER.sub(lambda m: m.group(1) + (m.group(2) or "") + self.marker, text)
        text = _BEARER.sub(lambda m: m.group(1) + self.marker, text)
        return _KEY_VALUE.sub(lambda m: m.group(1) + self.marker, text)

    def _redact_secrets(self, pattern: re.Pattern[str], text: str) -> str:
        if "\\" not in text and "%" not in text:
            return pattern.sub(self.marker, text)  # nothing escaped: the common case
        canonical, starts, ends = _canonical(text)
        spans = [(starts[m.start()], ends[m.end() - 1]) for m in pattern.finditer(canonical)]
        if not spans:
            return text
        out: list[str] = []
        done = 0
        for begin, stop in spans:
            if begin < done:
                continue  # overlaps the previous span (both inside one escape)
            out += [text[done:begin], self.marker]
            done = stop
        out.append(text[done:])
        return "".join(out)

    def leaks(self, text: str) -> bool:
        """Whether `text` would change under `redact` (holds a secret or a key shape)."""
        return self.redact(text) != text

    def exception_leaks(self, exc: BaseException) -> bool:
        """Whether a secret shows in `exc` or its causes and contexts: their messages, their
        arguments, their string attributes and notes (an opaque object, such as an HTTP
        response, is not looked into: `redact_exception` drops those)."""
        seen: set[int] = set()
        pending: list[BaseException | None] = [exc]
        while pending and len(seen) < _MAX_DEPTH * 4:
            item = pending.pop()
            if item is None or id(item) in seen:
                continue
            seen.add(id(item))
            texts = [_text(item), *(repr(a) for a in item.args)]
            texts += [v for v in getattr(item, "__dict__", {}).values() if isinstance(v, str)]
            texts += [str(n) for n in getattr(item, "__notes__", None) or ()]
            if any(self.leaks(text) for text in texts):
                return True
            pending += [item.__cause__, item.__context__]
            pending += [e for e in getattr(item, "exceptions", ()) if isinstance(e, BaseException)]
        return False

    def redact_value(self, value: Any, *, _depth: int = 0) -> Any:
        """A redacted copy of a JSON-like value (strings, numbers, lists, dicts); other
        objects (an HTTP response, a request with its headers) become None."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bytes | bytearray):
            return self.redact(bytes(value).decode("utf-8", "replace"))
        if _depth >= _MAX_DEPTH:
            return None
        if isinstance(value, BaseException):
            return self.redact_exception(value, _depth=_depth + 1)
        if isinstance(value, Mapping):
            return {
                self.redact(str(k)): self.redact_value(v, _depth=_depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            items = [self.redact_value(v, _depth=_depth + 1) for v in value]
            return tuple(items) if isinstance(value, tuple) else items
        return None

    def redact_exception(
        self,
        exc: BaseException,
        *,
        provider: str = "unknown",
        model: str = "unknown",
        _depth: int = 0,
    ) -> BaseException:
        """A sanitized copy of `exc`, its causes and contexts; the original stays unreachable.

        The copy has `exc`'s type when it can be rebuilt from redacted arguments and its
        redacted plain attributes (numbers, strings, JSON-like bodies); objects such as an
        HTTP request or response become None. Otherwise a `ProviderError` of `provider` and
        `model` carries the redacted message. The copy has no traceback (frames hold locals
        such as the key itself).

        Raise the copy *after* the `except` block, never inside it: Python sets the
        `__context__` of an exception raised while another is handled to that other one
        (even with `raise … from None`, and from a context manager's `__exit__`), which
        would make the original reachable again::

            clean = None
            try:
                result = model.invoke(messages)
            except Exception as exc:
                clean = redactor.redact_exception(exc, provider=provider, model=name)
            if clean is not None:
                raise clean
        """
        copy = self._same_type(exc, _depth) or _fallback(
            type(exc).__name__, self.redact(_text(exc)), provider, model
        )
        if _depth < _MAX_DEPTH:
            if exc.__cause__ is not None:
                copy.__cause__ = self.redact_exception(
                    exc.__cause__, provider=provider, model=model, _depth=_depth + 1
                )
            if exc.__context__ is not None and exc.__context__ is not exc.__cause__:
                copy.__context__ = self.redact_exception(
                    exc.__context__, provider=provider, model=model, _depth=_depth + 1
                )
            elif exc.__context__ is not None:
                copy.__context__ = copy.__cause__
        copy.__suppress_context__ = exc.__suppress_context__
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            copy.__notes__ = [self.redact(str(note)) for note in notes]
        return copy

    def _same_type(self, exc: BaseException, depth: int) -> BaseException | None:
        cls = type(exc)
        try:
            args = tuple(self.redact_value(a, _depth=depth + 1) for a in exc.args)
            # __new__ without __init__: an __init__ may demand objects we drop (a response).
            copy: BaseException = cls.__new__(cls, *args)
            copy.args = args
            for name, value in vars(exc).items():
                if not name.startswith("__"):
                    setattr(copy, name, self.redact_value(value, _depth=depth + 1))
            text = str(copy)
        except Exception:
            return None
        if self.leaks(text) or (not text and _text(exc)):
            return None  # its __str__ reads something we could not clean
        return copy


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def _fallback(kind: str, message: str, provider: str, model: str) -> ProviderError:
    return ProviderError(provider, model, f"{kind}: {message}" if message else kind)
