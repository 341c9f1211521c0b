"""Provider names: the one name each provider has inside profiles, whatever a user typed.

A provider is named as the OpenTelemetry GenAI conventions name it (`gen_ai.provider.name`),
so that spans, usage rows, credentials and fallback chains agree. Users also write the names
other tools use — genai-prices and LangChain call the Gemini API `google` (LangChain's
`init_chat_model` also says `google_genai`) — and a chain written `gcp.gemini:` with a
`google:` fallback must be one provider, not a cross-provider chain. Refs are normalised
when they are parsed from text and when a profile is written, not per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

PROVIDER_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "google": "gcp.gemini",
        "google_genai": "gcp.gemini",
        "google-genai": "gcp.gemini",
        "gemini": "gcp.gemini",
    }
)
"""Other names of a provider → its OpenTelemetry name. Vertex AI (`gcp.vertex_ai`) is a
different endpoint with other credentials, so it is not an alias of the Gemini API."""


def canonical_provider(name: str) -> str:
    """The OpenTelemetry name of provider `name` (`google` → `gcp.gemini`); other names as
    given."""
    return PROVIDER_ALIASES.get(name.lower(), name)


def provider_names(name: str) -> tuple[str, ...]:
    """Every name of provider `name`: its OpenTelemetry name first, then its aliases."""
    canonical = canonical_provider(name)
    return (
        canonical,
        *(alias for alias, target in PROVIDER_ALIASES.items() if target == canonical),
    )
