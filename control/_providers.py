"""Provider registry: provider name → a factory that builds a LangChain chat model.

`openai` (and any provider whose profile sets an OpenAI-compatible `base_url`) is built as
`langchain_openai.ChatOpenAI` with the SDK's own retries off (`max_retries=0`: comptroller
owns retries, otherwise they multiply) and `stream_usage=True` (a stream reports its usage
in the final chunk, so streamed calls are priced like buffered ones). Register any other
LangChain chat model with `ProviderRegistry.register(name, factory)`.

`anthropic` is built as `langchain_anthropic.ChatAnthropic` the same way: SDK retries off,
usage on streams, and always a `max_tokens` (the Messages API requires one; without a
profile value it is the plane's default max output tokens, the number the call's budget
reservation was sized for).

`gcp.gemini` (the OpenTelemetry `gen_ai.provider.name` of the Gemini API, so spans and
usage rows carry the semconv name) and its alias `google` (what genai-prices and
LangChain call it) are built as `langchain_google_genai.ChatGoogleGenerativeAI`: SDK
retries off, usage on every answer (Gemini always reports it), the profile's `max_tokens`
else the plane's default max output tokens.

A credential resolved as a `BearerToken` (an OAuth access token) is sent as
`Authorization: Bearer`, never as an API key: the Gemini API refuses an OAuth token in
`x-goog-api-key`. The OpenAI and Anthropic SDKs send every key as a bearer token already.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from comptroller.control._provider_names import canonical_provider
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel
    from langchain_core.outputs import ChatGenerationChunk

    from comptroller.control._embedders import Embedder, EmbeddingsFactory


class BearerToken(str):
    """A secret to send as `Authorization: Bearer`, never as an API key: what a credential
    store resolves an OAuth access token to."""

    __slots__ = ()


NO_CREDENTIAL = "comptroller-no-credential"
"""API key sent to an OpenAI-compatible endpoint when the profile has no credential
(local servers and cassette replay ignore it)."""

_replays = 0
_replays_lock = threading.Lock()


@contextmanager
def keyless_replay() -> Iterator[None]:
    """While open, a model of a public endpoint without a credential builds with
    `NO_CREDENTIAL` instead of failing: a cassette replays its answers, so nothing reaches
    the provider. Process-wide, as the cassette's patching of the HTTP clients is; the
    environment is left alone."""
    global _replays
    with _replays_lock:
        _replays += 1
    try:
        yield
    finally:
        with _replays_lock:
            _replays -= 1


def _keyless(spec: ModelSpec) -> bool:
    """Whether `spec` may be built without a credential: a local or proxied endpoint (its
    own `base_url`), or a cassette replaying."""
    return spec.base_url is not None or _replays > 0


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """Everything a factory needs to build one chat model."""

    provider: str
    model: str
    base_url: str | None = None
    api_key: str | None = None
    """The resolved credential; None to let the provider's SDK read its environment."""
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None
    default_max_tokens: int | None = None
    """The plane's default max output tokens (what a call reserves for when the profile sets
    no `max_tokens`): for providers that require a maximum on every request."""


_OUTPUT_CAP_NAMES = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_OUTPUT_CAP_NAME = {
    "gcp.gemini": "max_output_tokens",
    "anthropic": "max_tokens",
    "openai": "max_tokens",
}
"""The keyword each built-in integration reads a call's output cap under."""


def output_cap(kwargs: Mapping[str, Any]) -> int | None:
    """The output cap a call's own keywords send (`invoke(x, max_tokens=…)`, `.bind(…)`):
    what the request may produce, so what its reservation covers, above or below the
    profile's."""
    for name in _OUTPUT_CAP_NAMES:
        value = kwargs.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def provider_kwargs(provider: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A call's keywords in the names `provider`'s integration reads.

    A guarded call may fall back to another provider, so its caller writes the output cap
    once, under any of `max_tokens`, `max_completion_tokens` or `max_output_tokens`; each
    built-in provider gets it under its own name (Gemini's request config refuses
    `max_tokens`, Anthropic's API `max_completion_tokens`). Other providers get the keywords
    as they were given.
    """
    name = _OUTPUT_CAP_NAME.get(provider)
    out = dict(kwargs)
    if name is None:
        return out
    given = [key for key in _OUTPUT_CAP_NAMES if key in out]
    if given and given != [name]:
        value = out.pop(given[0])
        for key in given[1:]:
            out.pop(key)
        out[name] = value
    return out


ChatModelFactory: TypeAlias = "Callable[[ModelSpec], BaseChatModel]"


def openai_api_key(spec: ModelSpec) -> str | None:
    """The key an OpenAI(-compatible) client of `spec` is built with (None: the SDK reads
    `OPENAI_API_KEY`); a local endpoint without a credential gets a placeholder.

    Raises:
        UsageError: No credential for the public OpenAI endpoint.
    """
    api_key = spec.api_key
    if api_key is None:
        if spec.base_url is None and os.environ.get("OPENAI_API_KEY"):
            return None  # the SDK reads it
        if not _keyless(spec):
            raise UsageError(
                f"no credential for {spec.provider}:{spec.model}: set OPENAI_API_KEY, or give "
                "the profile a credential (comptroller credentials set …)"
            )
        api_key = os.environ.get("OPENAI_API_KEY") or NO_CREDENTIAL
    return api_key


def openai_chat_model(spec: ModelSpec) -> BaseChatModel:
    """Build `ChatOpenAI` for OpenAI or an OpenAI-compatible endpoint, SDK retries off.

    Raises:
        UsageError: No credential for the public OpenAI endpoint.
    """
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    api_key = openai_api_key(spec)
    return ChatOpenAI(
        model=spec.model,
        base_url=spec.base_url,
        api_key=SecretStr(api_key) if api_key is not None else None,
        max_retries=0,
        stream_usage=True,
        temperature=spec.temperature,
        max_completion_tokens=spec.max_tokens,
        timeout=spec.timeout_s,
    )


def anthropic_chat_model(spec: ModelSpec) -> BaseChatModel:
    """Build `ChatAnthropic` (Messages API), SDK retries off, usage on streams.

    Raises:
        UsageError: No credential for the public Anthropic endpoint.
    """
    from pydantic import SecretStr

    api_key = spec.api_key or os.environ.get("ANTHROPIC_API_KEY")
    if api_key is None:
        if not _keyless(spec):
            raise UsageError(
                f"no credential for {spec.provider}:{spec.model}: set ANTHROPIC_API_KEY, or "
                "give the profile a credential (comptroller credentials set …)"
            )
        # A local server or a recorded cassette: any key does, and none is leaked.
        api_key = NO_CREDENTIAL
    kwargs: dict[str, Any] = {}
    if spec.temperature is not None:
        kwargs["temperature"] = spec.temperature
    if spec.timeout_s is not None:
        kwargs["default_request_timeout"] = spec.timeout_s
    if spec.base_url is not None:
        kwargs["base_url"] = spec.base_url
    return _chat_anthropic_class()(
        model=spec.model,
        api_key=SecretStr(api_key),
        max_retries=0,
        stream_usage=True,
        max_tokens=spec.max_tokens or spec.default_max_tokens or _ANTHROPIC_MAX_TOKENS,
        **kwargs,
    )


_ANTHROPIC_MAX_TOKENS = 4096
"""`max_tokens` when neither the profile nor the plane gives one (the plane's own default)."""

_CACHE_TTL_KEYS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
_SPLIT_KEY = "comptroller_cache_creation"


@functools.cache
def _chat_anthropic_class() -> type[BaseChatModel]:
    """`ChatAnthropic` whose streams report cache writes split by lifetime, as its buffered
    answers do.

    The Messages API sends the 5-minute / 1-hour split of the cache writes only in the
    stream's `message_start`; langchain-anthropic reads usage from the final `message_delta`
    alone, so a streamed 1-hour write would be priced as a (cheaper) 5-minute one. The split
    is carried from the first event to the usage chunk, per stream (the model is shared by
    concurrent calls, so nothing is kept on it). Built on first use: langchain-anthropic is
    imported only when an anthropic profile is used.
    """
    from langchain_anthropic import ChatAnthropic

    class _ChatAnthropic(ChatAnthropic):
        def _make_message_chunk_from_anthropic_event(
            self, event: Any, **kwargs: Any
        ) -> tuple[Any, Any]:
            chunk, block = super()._make_message_chunk_from_anthropic_event(event, **kwargs)
            if chunk is not None and getattr(event, "type", None) == "message_start":
                split = _cache_split(getattr(getattr(event, "message", None), "usage", None))
                if split:
                    chunk.response_metadata[_SPLIT_KEY] = split
            return chunk, block

        def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
            split: dict[str, int] | None = None
            for chunk in super()._stream(*args, **kwargs):
                split = _carry_split(chunk, split)
                yield chunk

        async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
            split: dict[str, int] | None = None
            async for chunk in super()._astream(*args, **kwargs):
                split = _carry_split(chunk, split)
                yield chunk

    _ChatAnthropic.__name__ = _ChatAnthropic.__qualname__ = "ChatAnthropic"
    return _ChatAnthropic


def _cache_split(usage: Any) -> dict[str, int] | None:
    """The `cache_creation` split of an Anthropic usage, when it has one."""
    creation: Any = getattr(usage, "cache_creation", None)
    if creation is None:
        return None
    if not isinstance(creation, Mapping):
        creation = creation.model_dump()
    split = {key: int(creation.get(key) or 0) for key in _CACHE_TTL_KEYS}
    return split if any(split.values()) else None


def _carry_split(chunk: ChatGenerationChunk, split: dict[str, int] | None) -> dict[str, int] | None:
    """Take the split from the stream's first chunk; put it in the usage chunk's details (as
    langchain-anthropic does for a buffered answer: the generic key 0, not counted twice)."""
    message: Any = chunk.message
    found = message.response_metadata.pop(_SPLIT_KEY, None)
    if found is not None:
        return dict(found)
    usage = getattr(message, "usage_metadata", None)
    if split and usage:
        details = dict(usage.get("input_token_details") or {})
        if not any(key in details for key in _CACHE_TTL_KEYS) and details.get(
            "cache_creation"
        ) == sum(split.values()):
            details.update(split, cache_creation=0)
            message.usage_metadata = {**usage, "input_token_details": details}
    return split


def google_chat_model(spec: ModelSpec) -> BaseChatModel:
    """Build `ChatGoogleGenerativeAI` (Gemini API), SDK retries off.

    Raises:
        UsageError: No credential for the public Gemini endpoint.
    """
    from langchain_google_genai import ChatGoogleGenerativeAI
    from pydantic import SecretStr

    api_key = spec.api_key or os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")
    if api_key is None:
        if not _keyless(spec):
            raise UsageError(
                f"no credential for {spec.provider}:{spec.model}: set GOOGLE_API_KEY (or "
                "GEMINI_API_KEY), or give the profile a credential (comptroller credentials "
                "set …)"
            )
        # A local server or a recorded cassette: any key does, and none is leaked.
        api_key = NO_CREDENTIAL
    kwargs: dict[str, Any] = {}
    if spec.temperature is not None:
        kwargs["temperature"] = spec.temperature
    if spec.timeout_s is not None:
        kwargs["timeout"] = spec.timeout_s
    if spec.base_url is not None:
        kwargs["base_url"] = spec.base_url
    max_output_tokens = spec.max_tokens or spec.default_max_tokens
    if max_output_tokens is not None:
        kwargs["max_output_tokens"] = max_output_tokens
    bearer = isinstance(spec.api_key, BearerToken)
    if bearer:
        kwargs["additional_headers"] = {"authorization": f"Bearer {api_key}"}
    model: BaseChatModel = ChatGoogleGenerativeAI(
        model=spec.model,
        api_key=SecretStr(api_key),
        # Attempts, not retries: 1 is "the first request only", as langchain-google-genai
        # documents it (it warns that google-genai may read 0 as its default of several).
        max_retries=1,
        **kwargs,
    )
    if bearer:
        _drop_gemini_api_key(model, spec)
    return model


def _drop_gemini_api_key(model: Any, spec: ModelSpec) -> None:
    """Stop `model` sending its key as `x-goog-api-key` (it carries it as a bearer token).

    langchain-google-genai builds a Gemini API client only from an API key, and google-genai
    puts that key in the headers every request copies (sync, async and streamed alike,
    whichever HTTP library sends them); the headers are held by the client's private
    `_api_client`, so a google-genai that keeps them elsewhere is refused rather than
    sending the OAuth token as an API key.

    Raises:
        UsageError: This google-genai keeps its headers where they cannot be changed.
    """
    client = getattr(getattr(model, "client", None), "_api_client", None)
    headers = getattr(getattr(client, "_http_options", None), "headers", None)
    if not isinstance(headers, dict) or headers.pop("x-goog-api-key", None) is None:
        raise UsageError(
            f"cannot send the OAuth token of {spec.provider}:{spec.model} as a bearer token "
            "with this version of google-genai: use an API key for the Gemini API, or "
            "install the google-genai version comptroller is tested with"
        )


class ProviderRegistry:
    """Provider name → chat-model factory. Thread-safe; one per control plane.

    Example:
        >>> registry = ProviderRegistry()
        >>> registry.register("fake", lambda spec: make_my_model(spec.model))  # doctest: +SKIP
    """

    def __init__(self, factories: Mapping[str, ChatModelFactory] | None = None) -> None:
        self._lock = threading.Lock()
        # Under canonical names only: a model's ref names its provider so (`google:` is
        # `gcp.gemini:`), and a factory registered under an alias must serve it.
        self._factories: dict[str, ChatModelFactory] = {
            "openai": openai_chat_model,
            "anthropic": anthropic_chat_model,
            "gcp.gemini": google_chat_model,
        }
        for name, factory in (factories or {}).items():
            self._factories[canonical_provider(name)] = factory
        self._embeddings: dict[str, EmbeddingsFactory] = {"openai": _openai_embedder}

    def register(self, name: str, factory: ChatModelFactory) -> None:
        """Use `factory` to build the models of provider `name` (replacing any before; an
        alias such as `google` registers its provider, `gcp.gemini`)."""
        with self._lock:
            self._factories[canonical_provider(name)] = factory

    def names(self) -> list[str]:
        """The registered provider names, sorted."""
        return sorted(self._factories)

    def factory(self, provider: str, *, base_url: str | None = None) -> ChatModelFactory:
        """The factory of `provider`; an unregistered provider with a `base_url` is treated
        as OpenAI-compatible.

        Raises:
            UsageError: Unknown provider and no `base_url`.
        """
        found = self._factories.get(provider) or self._factories.get(canonical_provider(provider))
        if found is not None:
            return found
        if base_url is not None:
            return openai_chat_model
        raise UsageError(
            f"no chat-model factory for provider {provider!r} (known: "
            f"{', '.join(self.names())}); register one with "
            "ControlPlane.register_provider(name, factory), or give the profile an "
            "OpenAI-compatible base_url"
        )

    def build(self, spec: ModelSpec) -> BaseChatModel:
        """Build the chat model of `spec` with its provider's factory."""
        return self.factory(spec.provider, base_url=spec.base_url)(spec)

    def register_embeddings(self, name: str, factory: EmbeddingsFactory) -> None:
        """Use `factory` to build the embedding models of provider `name`: an `Embedder`
        (usage as the provider reports it) or any LangChain `Embeddings` (usage estimated
        from the input, flagged so)."""
        with self._lock:
            self._embeddings[canonical_provider(name)] = factory

    def build_embeddings(self, spec: ModelSpec) -> Embedder:
        """Build the embedding model of `spec`; an unregistered provider with a `base_url`
        is treated as OpenAI-compatible.

        Raises:
            UsageError: No embeddings factory for the provider and no `base_url`.
        """
        from comptroller.control._embedders import as_embedder

        found = self._embeddings.get(spec.provider) or self._embeddings.get(
            canonical_provider(spec.provider)
        )
        if found is None and spec.base_url is not None:
            found = _openai_embedder
        if found is None:
            raise UsageError(
                f"no embeddings factory for provider {spec.provider!r} (known: "
                f"{', '.join(sorted(self._embeddings))}); register one with "
                "ControlPlane.register_embeddings(name, factory), or give the profile an "
                "OpenAI-compatible base_url"
            )
        return as_embedder(found(spec), spec.model)


def _openai_embedder(spec: ModelSpec) -> Embedder | Embeddings:
    from comptroller.control._embedders import openai_embedder

    return openai_embedder(spec)
