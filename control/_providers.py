"""Provider registry: provider name → a factory that builds a LangChain chat model.

`openai` (and any provider whose profile sets an OpenAI-compatible `base_url`) is built as
`langchain_openai.ChatOpenAI` with the SDK's own retries off (`max_retries=0`: comptroller
owns retries, otherwise they multiply) and `stream_usage=True` (a stream reports its usage
in the final chunk, so streamed calls are priced like buffered ones). Register any other
LangChain chat model with `ProviderRegistry.register(name, factory)`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from comptroller.errors import UsageError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

NO_CREDENTIAL = "comptroller-no-credential"
"""API key sent to an OpenAI-compatible endpoint when the profile has no credential
(local servers and cassette replay ignore it)."""


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


ChatModelFactory: TypeAlias = "Callable[[ModelSpec], BaseChatModel]"


def openai_chat_model(spec: ModelSpec) -> BaseChatModel:
    """Build `ChatOpenAI` for OpenAI or an OpenAI-compatible endpoint, SDK retries off.

    Raises:
        UsageError: No credential for the public OpenAI endpoint.
    """
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    api_key = spec.api_key
    if api_key is None:
        if spec.base_url is None and not os.environ.get("OPENAI_API_KEY"):
            raise UsageError(
                f"no credential for {spec.provider}:{spec.model}: set OPENAI_API_KEY, or give "
                "the profile a credential (comptroller credentials set …)"
            )
        if spec.base_url is not None:
            api_key = os.environ.get("OPENAI_API_KEY") or NO_CREDENTIAL
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


class ProviderRegistry:
    """Provider name → chat-model factory. Thread-safe; one per control plane.

    Example:
        >>> registry = ProviderRegistry()
        >>> registry.register("fake", lambda spec: make_my_model(spec.model))  # doctest: +SKIP
    """

    def __init__(self, factories: Mapping[str, ChatModelFactory] | None = None) -> None:
        self._lock = threading.Lock()
        self._factories: dict[str, ChatModelFactory] = {"openai": openai_chat_model}
        self._factories.update(factories or {})

    def register(self, name: str, factory: ChatModelFactory) -> None:
        """Use `factory` to build the models of provider `name` (replacing any before)."""
        with self._lock:
            self._factories[name] = factory

    def names(self) -> list[str]:
        """The registered provider names, sorted."""
        return sorted(self._factories)

    def factory(self, provider: str, *, base_url: str | None = None) -> ChatModelFactory:
        """The factory of `provider`; an unregistered provider with a `base_url` is treated
        as OpenAI-compatible.

        Raises:
            UsageError: Unknown provider and no `base_url`.
        """
        found = self._factories.get(provider)
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
