"""Values of a model profile, shared by profile resolution and the guarded call.

A profile holds the settings for one (scope, purpose). Resolution merges the chain
domain → org → global → server defaults field by field into a `ResolvedProfile`, which is
all the guarded call needs to know.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Literal, Protocol, TypeAlias
from urllib.parse import urlsplit

from comptroller.control._provider_names import canonical_provider

CredentialSource: TypeAlias = Literal["managed", "byo"]
ScopeKind: TypeAlias = Literal["global", "org", "domain"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRef:
    """A model at a provider, written `provider:model` (e.g. `openai:gpt-4o-mini`), or
    `provider:model@URL` for a model served at its own endpoint."""

    provider: str
    """Provider id as the OpenTelemetry conventions name it (`openai`, `anthropic`,
    `gcp.gemini`, …); an alias given (`google`) is turned into it."""
    model: str
    """The provider's model id."""
    base_url: str | None = None
    """This model's endpoint (an OpenAI-compatible server, a regional or proxied endpoint);
    None for the profile's `base_url` when the provider is the profile's own, else the
    provider's default. Lets a fallback chain cross to another provider's endpoint."""

    def __post_init__(self) -> None:
        canonical = canonical_provider(self.provider)
        if canonical != self.provider:
            # One provider, one name: rows, spans, circuits and chains compare it as text.
            object.__setattr__(self, "provider", canonical)
        if self.base_url is not None:
            # Checked here, not only in `parse`: a ref is stored as text and read back with
            # `parse`, which finds the endpoint by its `@http(s)://`.
            check_endpoint(self.base_url, of=f"{self.provider}:{self.model}")

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse `provider:model` or `provider:model@URL`; a provider alias (`google`)
        becomes its OpenTelemetry name (`gcp.gemini`).

        The endpoint starts at the first `@` followed by a URL scheme, so model ids that
        contain `@` (Vertex AI's `claude-sonnet-4-5@20250929`) parse as model ids.

        Raises:
            ValueError: `text` is not of that form, or the URL is not an http(s) URL with a
                host and without a user or password.
        """
        ref, base_url = text, None
        at = _endpoint_start(text)
        if at >= 0:
            ref, base_url = text[:at], text[at + 1 :]
        provider, sep, model = ref.partition(":")
        if not sep or not provider or not model:
            raise ValueError(
                f"expected 'provider:model', got {text!r} (or 'provider:model@URL' for a model "
                "at its own endpoint)"
            )
        return cls(provider=canonical_provider(provider), model=model, base_url=base_url)

    def canonical(self) -> ModelRef:
        """This ref with its provider's OpenTelemetry name (itself when already so)."""
        name = canonical_provider(self.provider)
        return self if name == self.provider else replace(self, provider=name)

    def to_text(self) -> str:
        """The text `parse` reads back: `provider:model`, plus `@URL` for an own endpoint."""
        text = f"{self.provider}:{self.model}"
        return text if self.base_url is None else f"{text}@{self.base_url}"

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def _endpoint_start(text: str) -> int:
    """Index of the `@` that starts an endpoint URL in `text`, or -1."""
    at = text.find("@")
    while at >= 0:
        if "://" in text[at + 1 :].split("@", 1)[0]:
            return at
        at = text.find("@", at + 1)
    return -1


def check_endpoint(url: str, *, of: str) -> str:
    """`url` if it is an http(s) URL with a host and no user or password.

    Raises:
        ValueError: Saying what is wrong with `url` and what to write instead.
    """
    example = "e.g. https://llm.example.com/v1 or http://127.0.0.1:8000/v1"
    if not url or any(c.isspace() for c in url):
        raise ValueError(f"the endpoint of {of} is empty or has spaces: {url!r} ({example})")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"the endpoint of {of} is not a URL: {url!r} ({exc}; {example})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"the endpoint of {of} must start with http:// or https://, got {url!r} ({example})"
        )
    if not parts.hostname:
        raise ValueError(f"the endpoint of {of} has no host: {url!r} ({example})")
    if parts.username is not None or parts.password is not None:
        # Profiles are shown, diffed, audited and sent as telemetry: no secret belongs there.
        raise ValueError(
            f"the endpoint of {of} carries a user or password; give the URL without them and "
            "store the key with `comptroller credentials set`"
        )
    return url


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitSpec:
    """Token-bucket limits for one (tenant, context, purpose)."""

    requests_per_interval: int | None = None
    """Requests admitted per `interval_s`; None for no request limit."""
    tokens_per_interval: int | None = None
    """Tokens (input + output) admitted per `interval_s`; None for no token limit."""
    interval_s: float = 60.0
    burst: int | None = None
    """Bucket capacity in requests; default: `requests_per_interval`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetSpec:
    """Daily spend cap for one (tenant, context, purpose)."""

    daily_usd: Decimal
    """Cap on the spend of one day (in the configured time zone), in USD."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CallDefaults:
    """Defaults applied to each call unless the caller overrides them."""

    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DegradationPolicy:
    """Quality degradation: N validation/refusal failures in a window → upgrade purpose."""

    failures: int
    """Consecutive validation or refusal failures that trigger the upgrade."""
    window_s: float
    """The upgrade lasts until no failure was seen for this long."""
    upgrade_to: str
    """The stronger purpose whose profile serves the calls meanwhile."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolvedProfile:
    """The effective settings for one call's (domain, org, purpose), every field resolved."""

    purpose: str
    model: ModelRef
    fallbacks: tuple[ModelRef, ...] = ()
    """Tried in order when `model` is exhausted (retries spent, circuit open)."""
    allow_cross_provider: bool = False
    """Whether the fallback chain may leave `model`'s provider."""
    rate_limit: RateLimitSpec | None = None
    budget: BudgetSpec | None = None
    defaults: CallDefaults = field(default_factory=CallDefaults)
    credential_source: CredentialSource = "managed"
    credential_ref: str | None = None
    """Opaque reference to a stored credential; resolved at call time, never logged."""
    base_url: str | None = None
    """Endpoint of an OpenAI-compatible provider; None for the provider's default."""
    degradation: DegradationPolicy | None = None
    variant: str | None = None
    """Reserved for A/B routing."""
    profile_id: str | None = None
    """Id of the most specific stored profile that contributed (None: server defaults only)."""
    version: int | None = None
    scope_kind: ScopeKind = "global"
    """Scope of the most specific contributing profile."""
    scope_id: str | None = None
    credential_revision: str | None = None
    """Changes whenever a credential this profile's models would use is set, rotated or
    deleted (never derived from the secret): key cached model clients on it, so that a
    rotated key takes effect without a restart."""


class ProfileResolver(Protocol):
    """Anything that resolves the profile of a call (the store-backed service, a static map)."""

    def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> ResolvedProfile:
        """The effective profile for `purpose` at (domain, org).

        Raises:
            comptroller.errors.ComptrollerError: No profile and no server default for it.
        """
        ...
