"""Values of a model profile, shared by profile resolution and the guarded call.

A profile holds the settings for one (scope, purpose). Resolution merges the chain
domain → org → global → server defaults field by field into a `ResolvedProfile`, which is
all the guarded call needs to know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol, TypeAlias

CredentialSource: TypeAlias = Literal["managed", "byo"]
ScopeKind: TypeAlias = Literal["global", "org", "domain"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRef:
    """A model at a provider, written `provider:model` (e.g. `openai:gpt-4o-mini`)."""

    provider: str
    """Provider id as the OpenTelemetry conventions name it (`openai`, `anthropic`, …)."""
    model: str
    """The provider's model id."""
    base_url: str | None = None
    """This model's endpoint (an OpenAI-compatible server, a regional or proxied endpoint);
    None for the profile's `base_url` when the provider is the profile's own, else the
    provider's default. Lets a fallback chain cross to another provider's endpoint."""

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse `provider:model`.

        Raises:
            ValueError: `text` is not of the form `provider:model`.
        """
        provider, sep, model = text.partition(":")
        if not sep or not provider or not model:
            raise ValueError(f"expected 'provider:model', got {text!r}")
        return cls(provider=provider, model=model)

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


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
