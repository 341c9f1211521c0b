"""Record a test's provider traffic once, replay it without the provider or a credential.

Built on vcrpy (the optional extra `cassettes`), which patches httpx, requests, aiohttp and
urllib3 — every HTTP stack the OpenAI, Anthropic and Gemini SDKs use — for the duration of a
cassette. What this module adds to vcrpy:

- secrets never reach the file: request headers and query parameters whose name says
  they carry a credential (`authorization`, `x-api-key`, `x-goog-api-key`, `api-key`,
  `proxy-authorization`, `cookie`, Gemini's `key`, and any other name with a part such as
  `key`, `token`, `secret`, `auth`, `signature`: gateways and proxies name theirs freely),
  the account headers `openai-organization` and `openai-project`, and response headers that
  name an account (`openai-organization`, `openai-project`, `anthropic-organization-id`,
  `set-cookie`) are removed before anything is written; a value so removed, or a
  `*_API_KEY` variable of the environment, is also replaced wherever else it shows (an
  error body echoing the key, a URL), so the key is nowhere in the file;
- OAuth token requests (a body with `grant_type`, as a refreshable credential sends to
  its token endpoint) are never recorded: they carry the refresh token and client secret,
  and their answers carry new tokens; they go to the endpoint, during a replay too;
- a request is matched on method, scheme, host, port, path and body, never on headers or
  query: a streamed call and a buffered one, or two prompts, differ in their JSON bodies
  (compared as JSON, so key order does not matter), while keys, SDK versions and retry
  counters — which differ between the recording run and CI — live in headers and query;
- replay needs no credential: while a cassette replays, a guarded model of a public
  endpoint without a key builds with a placeholder instead of failing (the provider
  factories are told, `keyless_replay`); the environment is left as it is;
- a request the cassette does not hold fails the test with `CassetteMiss`, naming the
  request and the file and saying how to re-record, whatever the guarded call made of
  vcrpy's error first (raised as is, or wrapped by the SDK into a connection failure that
  the call retried, fell back from, and reported as the provider's);
- telemetry exports (OTLP/HTTP to a collector) pass through, never recorded.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeAlias, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from comptroller.control._providers import NO_CREDENTIAL, keyless_replay
from comptroller.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

CassetteMode: TypeAlias = Literal["once", "replay", "record"]
_T = TypeVar("_T")

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Headers removed from a request by name; any other whose name has a `_SECRET_PARTS` part
# goes too (`x-portkey-api-key`, `cf-aig-authorization`, `helicone-auth`).
_SECRET_REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "x-goog-api-key",
        "api-key",
        "openai-organization",
        "openai-project",
        "cookie",
    }
)
_ACCOUNT_RESPONSE_HEADERS = frozenset(
    {"openai-organization", "openai-project", "anthropic-organization-id", "set-cookie"}
)
# A header or query parameter whose name (split at `-`, `_`, `.`) has one of these parts, or
# ends in one of the `_SECRET_SUFFIXES` (`apikey`, `accesstoken`), holds a credential.
# Removing a harmless one costs nothing: neither headers nor the query are matched on.
_SECRET_PARTS = frozenset(
    {
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "jwt",
        "key",
        "passwd",
        "password",
        "secret",
        "session",
        "sig",
        "signature",
        "token",
    }
)
_SECRET_SUFFIXES = ("key", "token", "secret", "password")
_NAME_PARTS = re.compile(r"[-_.]+")
# A removed value is searched for elsewhere only when long enough not to be a common word.
_MIN_SECRET_LENGTH = 12
_FILTERED = "FILTERED"
_MATCH_ON = ("method", "scheme", "host", "port", "path", "body")
_OTLP_PATHS = ("/v1/traces", "/v1/logs", "/v1/metrics")
_FORM = "application/x-www-form-urlencoded"


class CassetteMiss(UsageError):
    """A replayed test made a request its cassette does not hold.

    Attributes:
        path: The cassette file.
        requests: Each request not found, as `METHOD URL` (without secret query parameters).
    """

    def __init__(self, path: Path, requests: list[str], reasons: list[str]) -> None:
        self.path = path
        self.requests = requests
        listed = "\n".join(
            f"  {request}{f' ({reason})' if reason else ''}"
            for request, reason in zip(requests, reasons, strict=True)
        )
        super().__init__(
            f"cassette {path} holds no recorded answer for:\n{listed}\n"
            "The code under test now makes a request that was not recorded (another prompt, "
            "model, parameter or number of calls). Re-record: delete the file and run the "
            "test again with its provider credentials set (mode='once'), or run it once "
            "with cassette(..., mode='record')."
        )


class Cassette:
    """Records a block's provider traffic to a YAML file, or replays it from there.

    Build one with `cassette(...)`. Use it as a context manager (`with`, also around async
    code) or as a decorator of a test function, sync or async. Not reentrant as a context
    manager; a decorated function may be called any number of times, each call with a
    fresh cassette.
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: CassetteMode = "once") -> None:
        """See `cassette`."""
        if mode not in ("once", "replay", "record"):
            raise UsageError(f"cassette mode {mode!r} is not one of 'once', 'replay', 'record'")
        self.path = Path(path)
        self.mode: CassetteMode = mode
        self._vcr_context: AbstractContextManager[Any] | None = None
        self._vcr_cassette: Any = None
        self._keyless: AbstractContextManager[None] | None = None
        self._replaying = False

    @property
    def replaying(self) -> bool:
        """Whether the open cassette replays (False while it records, or when closed)."""
        return self._replaying

    @property
    def play_count(self) -> int:
        """Recorded answers replayed so far by the open cassette."""
        return int(self._vcr_cassette.play_count) if self._vcr_cassette is not None else 0

    @property
    def recorded_count(self) -> int:
        """Interactions held by the open cassette: loaded from the file plus recorded now."""
        return len(self._vcr_cassette) if self._vcr_cassette is not None else 0

    def __enter__(self) -> Cassette:
        if self._vcr_context is not None:
            raise UsageError(f"cassette {self.path} is already open; it is not reentrant")
        if self.mode == "replay" and not self.path.is_file():
            raise UsageError(
                f"cassette {self.path} does not exist, so there is nothing to replay: record "
                "it by running the test once with its provider credentials set and "
                "cassette(..., mode='once') or mode='record'"
            )
        context = _vcr_context(self.path, self.mode)
        self._vcr_cassette = context.__enter__()
        self._vcr_context = context
        # `once` replays when vcrpy could read the file (an empty one is recorded over).
        self._replaying = self.mode == "replay" or (
            self.mode == "once" and bool(self._vcr_cassette.rewound)
        )
        if self._replaying:
            self._keyless = keyless_replay()
            self._keyless.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context, vcr_cassette = self._vcr_context, self._vcr_cassette
        self._vcr_context = self._vcr_cassette = None
        self._replaying = False
        if self._keyless is not None:
            self._keyless.__exit__(None, None, None)
            self._keyless = None
        if context is None:
            return
        # vcrpy writes nothing when nothing was recorded: a re-recording whose block made no
        # request (or only unrecorded ones) would leave the old answers in place.
        stale = self.mode == "record" and exc_type is None and not vcr_cassette.dirty
        context.__exit__(exc_type, exc, tb)
        if stale:
            self.path.unlink(missing_ok=True)
        misses: list[tuple[str, str]] = list(vcr_cassette.misses)
        if misses:
            # Raised even when the code under test swallowed the provider error (a fallback,
            # a retry that eventually matched): the replay no longer follows the recording.
            unique = list(dict.fromkeys(misses))
            raise CassetteMiss(
                self.path, [request for request, _ in unique], [reason for _, reason in unique]
            ) from exc

    async def __aenter__(self) -> Cassette:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, function: Callable[_P, _R]) -> Callable[_P, _R]:
        """Decorate `function` (sync or async): each call runs inside a fresh cassette."""
        if inspect.iscoroutinefunction(function):
            coroutine = cast("Callable[_P, Awaitable[Any]]", function)

            @functools.wraps(function)
            async def run_async(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with Cassette(self.path, mode=self.mode):
                    return await coroutine(*args, **kwargs)

            return cast("Callable[_P, _R]", run_async)

        @functools.wraps(function)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with Cassette(self.path, mode=self.mode):
                return function(*args, **kwargs)

        return run

    def __repr__(self) -> str:
        return f"Cassette({str(self.path)!r}, mode={self.mode!r})"


def cassette(path: str | os.PathLike[str], *, mode: CassetteMode = "once") -> Cassette:
    """Record the provider traffic of a block (or a test) to `path`, or replay it from there.

    Args:
        path: The YAML cassette file (its folder is created when recording).
        mode: `once` (default): replay when the file exists, else record it — the first run
            needs the provider and its credentials, every later one needs neither.
            `replay`: replay only; a missing file is an error (for CI). `record`: call the
            provider and write the file anew, whatever it held (a block that made no request
            leaves no file).

    Returns:
        A `Cassette`: a context manager, and a decorator for sync and async functions.

    Raises:
        ConfigError: vcrpy is not installed (`pip install 'comptroller[cassettes]'`).
        UsageError: Unknown mode; `replay` of a file that does not exist.
        CassetteMiss: On leaving the block, when it made a request the cassette does not
            hold (during a replay).

    Example:
        >>> from comptroller.control.testing import cassette
        >>> with cassette("tests/cassettes/summarise.yaml"):  # doctest: +SKIP
        ...     plane.chat_model("summarise").invoke("Summarise the ticket")
    """
    _vcr_module()  # fail at once, not when the block starts
    return Cassette(path, mode=mode)


def _vcr_module() -> Any:
    try:
        import vcr
    except ImportError:
        raise ConfigError(
            "cassettes need vcrpy, which is not installed: pip install 'comptroller[cassettes]'"
        ) from None
    return vcr


def _vcr_context(path: Path, mode: CassetteMode) -> AbstractContextManager[Any]:
    vcr = _vcr_module()
    from vcr.cassette import CassetteContextDecorator

    scrubber = _Scrubber(_environment_secrets())
    config = vcr.VCR(
        record_mode={"once": "once", "replay": "none", "record": "all"}[mode],
        match_on=_MATCH_ON,
        before_record_request=scrubber.request,
        before_record_response=scrubber.response,
        # Readable cassettes: a gzip'ed answer is stored as its text.
        decode_compressed_response=True,
        # A block that failed wrote nothing: a half-recorded cassette would replay as a
        # miss next time, far from the real cause.
        record_on_exception=False,
        # `record` starts from an empty cassette instead of merging into the old one.
        drop_unused_requests=mode == "record",
    ).get_merged_config(path=str(path))
    return cast(
        "AbstractContextManager[Any]",
        CassetteContextDecorator.from_args(_tracking_cassette_class(), **config),
    )


@functools.cache
def _tracking_cassette_class() -> type[Any]:
    """vcrpy's `Cassette`, noting the requests it cannot replay.

    vcrpy raises its own error inside the HTTP transport, where a provider SDK may wrap it
    into a connection error that the guarded call retries and reports as the provider's;
    the cassette keeps what it missed, for `Cassette.__exit__` to raise `CassetteMiss`.
    """
    from vcr.cassette import Cassette as VcrCassette
    from vcr.matchers import requests_match

    class _TrackingCassette(VcrCassette):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.misses: list[tuple[str, str]] = []

        def can_play_response_for(self, request: Any) -> bool:
            found = bool(super().can_play_response_for(request))
            if not found and self.write_protected:
                filtered = self.filter_request(request)
                if filtered is not None:
                    self.misses.append((f"{filtered.method} {filtered.uri}", self._why(filtered)))
            return found

        def _why(self, request: Any) -> str:
            if any(requests_match(request, stored, self._match_on) for stored in self.requests):
                return "recorded fewer times than requested"
            best = self.find_requests_with_most_matches(request)
            if not best:
                return "nothing recorded for this endpoint"
            differing = sorted({name for name, _ in best[0][2]})
            return "the closest recorded request differs in: " + ", ".join(differing)

    return _TrackingCassette


class _Scrubber:
    """What a cassette keeps of each exchange: no credential, wherever it shows.

    One per cassette: it learns the values it removes from headers and the query, and
    replaces them in whatever else it writes (bodies, response headers, URLs).
    """

    def __init__(self, secrets: set[str]) -> None:
        self._secrets = set(secrets)
        self._lock = threading.Lock()

    def request(self, request: Any) -> Any:
        """The request as written and matched; None for one that passes through unrecorded
        (telemetry exports, OAuth token requests)."""
        if _is_telemetry(request) or _is_token_request(request):
            return None
        found: set[str] = set()
        headers = request.headers
        for name in list(headers):
            if _is_secret_header(name):
                value = str(headers.pop(name))
                found.add(value)
                found.add(value.partition(" ")[2])  # the token of `Bearer <token>`
        parts = urlsplit(request.uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
        kept = [(name, value) for name, value in query if not _is_secret_name(name)]
        if len(kept) < len(query):
            found.update(value for name, value in query if _is_secret_name(name))
            request.uri = urlunsplit(parts._replace(query=urlencode(kept)))
        secrets = self._learn(found)
        for name, value in list(headers.items()):
            headers[name] = _scrubbed(value, secrets)
        request.uri = _scrubbed(request.uri, secrets)
        if isinstance(request.body, bytes):
            request.body = _scrubbed(request.body, secrets)
        return request

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        """The response as written: no account header, no known secret in it."""
        secrets = self._learn(set())
        headers: dict[str, Any] = response.get("headers") or {}
        response["headers"] = {
            name: [_scrubbed(v, secrets) for v in value] if isinstance(value, list) else value
            for name, value in headers.items()
            if name.lower() not in _ACCOUNT_RESPONSE_HEADERS
        }
        body = response.get("body")
        if isinstance(body, dict) and "string" in body:
            body["string"] = _scrubbed(body["string"], secrets)
        return response

    def _learn(self, found: set[str]) -> tuple[str, ...]:
        with self._lock:
            self._secrets.update(v for v in found if _worth_replacing(v))
            # Longest first: a key inside a longer value is replaced with the longer one.
            return tuple(sorted(self._secrets, key=len, reverse=True))


def _is_secret_header(name: str) -> bool:
    return name.lower() in _SECRET_REQUEST_HEADERS or _is_secret_name(name)


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    parts = set(_NAME_PARTS.split(lowered))
    return bool(parts & _SECRET_PARTS) or lowered.endswith(_SECRET_SUFFIXES)


def _worth_replacing(value: str) -> bool:
    return len(value) >= _MIN_SECRET_LENGTH and value != NO_CREDENTIAL


def _scrubbed(value: _T, secrets: tuple[str, ...]) -> _T:
    """`value` (text or bytes; anything else as is) with each of `secrets` replaced."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        data = value
    else:
        return value
    for secret in secrets:
        data = data.replace(secret.encode(), _FILTERED.encode())
    return cast("_T", data.decode("utf-8", "surrogatepass") if isinstance(value, str) else data)


def _environment_secrets() -> set[str]:
    """The provider keys of the environment: a response may echo one (an error naming it)."""
    return {
        value
        for name, value in os.environ.items()
        if name.upper().endswith("_API_KEY") and _worth_replacing(value)
    }


def _is_telemetry(request: Any) -> bool:
    """An OTLP/HTTP export: sent for real, never recorded."""
    content_type = str(request.headers.get("content-type", ""))
    return bool(
        request.path.endswith(_OTLP_PATHS) and content_type.startswith("application/x-protobuf")
    )


def _is_token_request(request: Any) -> bool:
    """An OAuth token request (RFC 6749: a form, or JSON for some endpoints, with
    `grant_type`)."""
    body = request.body
    if not isinstance(body, bytes) or b"grant_type" not in body:
        return False
    content_type = str(request.headers.get("content-type", "")).lower()
    text = body.decode("utf-8", "replace")
    if content_type.startswith(_FORM):
        return any(name == "grant_type" for name, _ in parse_qsl(text))
    if "json" in content_type:
        try:
            document = json.loads(text)
        except ValueError:
            return False
        return isinstance(document, dict) and "grant_type" in document
    return False
