from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from comptroller.config._attribution import AttributionBudgets
from comptroller.config._prices import PriceOverrides

FeeKind = Literal["web_searches", "storage_searches", "code_executions"]


class PurposeSettings(BaseModel):
    """One purpose as configured (`[control.purposes.<name>]` in the file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    override: Literal["locked", "operator_allowed", "open"] | None = None
    """Who may change its model below the platform. Default: the built-in class of a default
    purpose, `operator_allowed` for a declared one."""
    approved_models: tuple[str, ...] | None = None
    """`provider:model` ids a scope admin may pick for an `operator_allowed` purpose."""
    embedding: bool | None = None
    """Whether it produces vectors (a model change then warns that vectors need re-embedding)."""
    description: str | None = None
    """What the purpose is for (shown by `comptroller profiles`)."""


class PriceSpec(BaseModel):
    """A fallback price for one `provider:model` (`[control.prices."openai:my-model"]`).

    USD per million tokens. A kind left unset is charged as its parent, exactly as
    genai-prices does: cache reads and writes at the input price, reasoning at the output
    price.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_mtok: Decimal = Field(ge=0)
    """USD per million input tokens (uncached)."""
    output_mtok: Decimal = Field(ge=0)
    """USD per million output tokens."""
    cache_read_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million input tokens read from the provider's prompt cache."""
    cache_write_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million input tokens written to the provider's prompt cache."""
    reasoning_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million reasoning (thinking) output tokens."""


class ControlSettings(BaseModel):
    """Settings of the in-process control plane (`[control]` in the file).

    Environment: `COMPTROLLER_CONTROL_<FIELD>`, e.g. `COMPTROLLER_CONTROL_PROFILE_STORE_URL`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile_store_url: str | None = None
    """SQLAlchemy URL of the profile store. Default: a SQLite file in the data directory."""
    resolution_cache_ttl_s: float = Field(default=1.0, gt=0)
    """Bound on how long another process may serve a stale resolution after a profile write."""
    state_backend: str = "memory"
    """Where rate-limit and budget state lives: `memory` (this process), a Redis URL
    (`redis://`, `rediss://`, `unix://`), or a Redis Cluster (`redis+cluster://host:port[,
    host:port…]`, `rediss+cluster://…`, or `?cluster=true`); see docs/DEPLOYMENT.md."""
    budget_max_reservation_usd: float = Field(default=1.0, gt=0)
    """Ceiling on the worst-case cost reserved for one request before it runs."""
    max_retries: int = Field(default=3, ge=0, le=10)
    """Retries on the same model for 429/5xx/timeouts before falling back."""
    retry_backoff_s: float = Field(default=0.5, gt=0)
    """First retry backoff (doubles per retry, with jitter; a longer Retry-After wins)."""
    retry_max_backoff_s: float = Field(default=20.0, gt=0)
    """Longest backoff between two retries."""
    max_retry_after_s: float = Field(default=60.0, ge=0)
    """A provider's Retry-After longer than this is not waited for: the call falls back."""
    default_max_output_tokens: int = Field(default=4096, gt=0)
    """Output tokens assumed by the worst-case budget reservation when a profile sets no
    `max_tokens`."""
    circuit_failures: int = Field(default=5, gt=0)
    """Consecutive transport failures that open the circuit of a (provider, model)."""
    circuit_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    """Failure ratio within `circuit_window_s` (over at least 20 calls) that opens a circuit."""
    circuit_window_s: float = Field(default=60.0, gt=0)
    """Counting window of the failure ratio."""
    circuit_cooldown_s: float = Field(default=30.0, gt=0)
    """How long an open circuit waits before admitting a half-open probe."""
    circuit_quota_cooldown_s: float = Field(default=3600.0, gt=0)
    """Cooldown of a circuit opened by a 402 or quota-exhausted answer."""
    spool_max_mb: float = Field(default=256.0, gt=0)
    """Bound on the OTLP spool (usage rows kept while the collector is unreachable); when
    full, calls fail with a clear error rather than lose billing rows."""
    master_key_file: str | None = None
    """File holding the credentials master key. Default: `master.key` in the data directory."""
    allow_oauth_credentials: bool | None = None
    """Whether `oauth` credentials (refreshable bundles whose refresh token comptroller sends to
    their token endpoint) may be stored and used; enforced when one is set and when a call
    resolves one. Default: only in local development (`environment = "development"`); turn it
    on elsewhere with `COMPTROLLER_CONTROL_ALLOW_OAUTH_CREDENTIALS=1`."""
    oauth_refresh_margin_s: float = Field(default=60.0, ge=0)
    """An OAuth access token closer than this to its expiry is renewed before a call uses it."""
    oauth_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Time limit of one request to an OAuth token endpoint (a refresh waiting on it holds up
    only the calls that need that credential)."""
    state_prefix: str = "comptroller"
    """Prefix of every key the Redis state backend writes (several deployments may share a
    server)."""
    reservation_ttl_s: float = Field(default=900.0, gt=0)
    """A budget reservation not settled within this time (its process died) is dropped, so
    crashed callers do not hold budget forever. Keep it above the longest call."""
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    """How often the ledger is reconciled with the analytics budget state, when a source is
    configured (`budget_state_url`)."""
    budget_state_url: str | None = None
    """`GET /api/budget-state` URL of the collector, to seed and reconcile today's spend."""
    prices: dict[str, PriceSpec] = Field(default_factory=dict)
    """Fallback prices for models genai-prices does not know, keyed `provider:model`, in USD
    per million tokens: `[control.prices."ollama:llama3"] input_mtok = 0.1`."""
    price_overrides: PriceOverrides = ()
    """Negotiated prices: a discount on the list price or prices of its own for a
    `provider:model` (or `provider:*`), optionally per org, from a UTC day on
    (`[[control.price_overrides]]`; see "Price overrides" below)."""
    fee_prices: dict[str, dict[FeeKind, Annotated[Decimal, Field(ge=0)]]] = Field(
        default_factory=dict
    )
    """USD per request of the non-token fees genai-prices has no price for, keyed
    `provider:model` or `provider:*`: `[control.fee_prices."openai:*"] web_searches = 0.01`
    (kinds: `web_searches`, `storage_searches`, `code_executions`)."""
    attribution_budgets: AttributionBudgets = ()
    """Daily caps per end user, session, feature or tag (`[[control.attribution_budgets]]`;
    see "Spend by attribution" in the README), enforced like the profile's budget: a worst-case
    reservation, refused when it does not fit."""
    purposes: dict[str, PurposeSettings] = Field(default_factory=dict)
    """Purposes declared by this deployment, or changes to the default ones (override class,
    platform-approved models): `[control.purposes.extraction] override = "operator_allowed"`,
    or JSON in `COMPTROLLER_CONTROL_PURPOSES`."""
    keyless_providers: tuple[str, ...] = ("ollama",)
    """Providers that need no credential (a local OpenAI-compatible server); a model of any
    other provider is refused unless its scope can resolve a credential for it."""
    known_models: tuple[str, ...] = ()
    """Extra `provider:model` ids accepted as known besides genai-prices and the fallback
    price registry (for models priced elsewhere)."""
