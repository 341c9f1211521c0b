"""What an LLM call cost: the one pricer of comptroller (control plane, collector, reprice).

`genai_prices.calc_price` re-resolves the model and walks its unit registry on every call
(~70 µs). The cost of a call is linear in its token counts within one price tier, so the
`Pricer` asks genai-prices' own `ModelPrice.calc_price` once per (model price, tier) for the
cost of a handful of probe usages, derives the per-token coefficient of every token kind from
them, and prices each call with a few Decimal multiplications (one per token kind the call
reports). Because the coefficients come from genai-prices' own arithmetic, every rule it
applies carries over unchanged: cache reads and writes carved out of the input count (1-hour
and 5-minute cache writes out of the writes), audio out of the input and output counts,
reasoning out of the output count, a kind without its own price charged as its parent,
per-request fees, tiers chosen by the input count, OpenAI service tiers (`flex`, `priority`:
genai-prices' price variants selected by `service_tier`, cached per tier) and prices that
change with the request time (the price in force at `at` is looked up per call, its
coefficients cached).

Models genai-prices does not know are priced from the configuration's fallback registry
(`[control.prices."provider:model"]`, USD per million tokens). A model known to neither is
`Price(None, "unpriced")`: never zero.

Negotiated prices (`[[control.price_overrides]]`, comptroller/config/_prices.py) apply on
top: the most specific override in force on the call's UTC day (org and model, org and
`provider:*`, model, `provider:*`) either discounts the list price (source
`override:<id>@<list source>`) or replaces it (source `override:<id>`). A pricer without
overrides, or a provider none names, prices exactly as before at the cost of one falsy test.

The control plane prices each attempt with it, the collector prices the usage rows it derives
from third-party spans with it (at the span's start time), and `comptroller reprice` reads its
per-kind `coefficients` to recompute past rows in SQL: one truth, one place to fix a price.

This module is light: genai-prices (~0.5 s to import) is loaded on the first price, and
nothing here imports langchain, duckdb or polars.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib.metadata import version
from typing import Any, Final

from comptroller.config._control import PriceSpec
from comptroller.config._prices import PriceOverride, validate_overrides

__all__ = [
    "FALLBACK_SOURCE",
    "FEE_KINDS",
    "GENAI_PRICES_SOURCE",
    "OVERRIDE_SOURCE_PREFIX",
    "PROVIDER_ALIASES",
    "UNPRICED_SOURCE",
    "Price",
    "PriceCoefficients",
    "Pricer",
    "TierCoefficients",
    "Usage",
]

GENAI_PRICES_SOURCE: Final = f"genai-prices@{version('genai-prices')}"
"""Price source of a cost computed from genai-prices data."""
FALLBACK_SOURCE: Final = "fallback"
"""Price source of a cost computed from the configuration's fallback registry."""
UNPRICED_SOURCE: Final = "unpriced"
"""Price source of a call whose price is unknown (its cost is None, never 0)."""
OVERRIDE_SOURCE_PREFIX: Final = "override:"
"""Prefix of the price source of a cost a price override set: `override:<id>` (prices of its
own) or `override:<id>@<list source>` (a discount on that list price)."""

PROVIDER_ALIASES: Final[Mapping[str, str | None]] = {
    # OpenTelemetry `gen_ai.provider.name` values (and the spellings instrumentations and
    # LangChain use) → genai-prices provider ids. None: a provider genai-prices has no prices
    # for (priced from the fallback registry only). A name not listed is tried as it is.
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "azure.ai.inference": "azure",
    "azure.ai.openai": "azure",
    "azure_openai": "azure",
    "cerebras": "cerebras",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "fireworks": "fireworks",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "gcp.vertex_ai": "google",
    # The Gemini API's profile name besides `gcp.gemini` (a built-in provider).
    "google": "google",
    "google_genai": "google",
    "google_vertexai": "google",
    "groq": "groq",
    "ibm.watsonx.ai": None,
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "moonshotai": "moonshotai",
    "openrouter": "openrouter",
    "perplexity": "perplexity",
    "together": "together",
    "together_ai": "together",
    "x_ai": "x-ai",
    "xai": "x-ai",
}
"""Default alias map, extended or overridden by `Pricer(aliases=…)`."""


FEE_KINDS: Final = ("web_searches", "storage_searches", "code_executions")
"""Non-token fees a response may report, named as genai-prices' usage keys (its price keys
are `<kind>_kcount`, USD per thousand)."""

_KINDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "cache_audio_read_tokens",
    "output_audio_tokens",
    "cache_write_1h_tokens",
    "cache_write_5m_tokens",
)
"""The token counts of a `Usage`, in the order of `Usage.counts` and `Pricer.price_counts`."""

_GENAI_KEYS: Final = {kind: kind for kind in _KINDS} | {
    "reasoning_tokens": "output_reasoning_tokens"
}
"""genai-prices' `Usage` field of each kind (inclusive counts there too)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Token usage of one provider attempt, as the provider reported it.

    Counts are *inclusive*, as in the OpenTelemetry GenAI conventions and genai-prices:
    `input_tokens` includes the cache reads and writes and the audio tokens,
    `cache_read_tokens` the cached audio tokens, `cache_write_tokens` the 1-hour and 5-minute
    writes, `output_tokens` the reasoning and audio tokens. (Anthropic reports input exclusive
    of cache tokens: add them before building this.)
    """

    input_tokens: int = 0
    """All input (prompt) tokens, cached and audio ones included."""
    output_tokens: int = 0
    """All output (completion) tokens, reasoning and audio included."""
    cache_read_tokens: int = 0
    """Input tokens served from the provider's prompt cache (cached audio included)."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's prompt cache (every lifetime)."""
    reasoning_tokens: int = 0
    """Output tokens spent on reasoning (thinking)."""
    input_audio_tokens: int = 0
    """Input tokens of audio (cached audio included)."""
    cache_audio_read_tokens: int = 0
    """Cached input tokens of audio (part of both `cache_read_tokens` and `input_audio_tokens`)."""
    output_audio_tokens: int = 0
    """Output tokens of audio."""
    cache_write_1h_tokens: int = 0
    """Cache writes with a 1-hour lifetime (Anthropic; part of `cache_write_tokens`)."""
    cache_write_5m_tokens: int = 0
    """Cache writes with a 5-minute lifetime (part of `cache_write_tokens`)."""
    service_tier: str | None = None
    """The service tier the provider ran the call in (OpenAI `flex`, `priority`, …), as the
    response reports it; None: the standard price."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (what a tokens-per-interval rate limit counts)."""
        return self.input_tokens + self.output_tokens

    def counts(self) -> tuple[int, ...]:
        """The token counts in the order of `Pricer.price_counts` tuples."""
        return (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
            self.input_audio_tokens,
            self.cache_audio_read_tokens,
            self.output_audio_tokens,
            self.cache_write_1h_tokens,
            self.cache_write_5m_tokens,
        )

    @property
    def consistent(self) -> bool:
        """Whether the counts can be priced: none negative, the parts within their totals."""
        # `_consistent(self.counts())`; this runs on every priced call, and most calls report
        # none of the audio and cache-lifetime kinds: those are checked without the tuple.
        inp, cr, cw = self.input_tokens, self.cache_read_tokens, self.cache_write_tokens
        if not (
            self.input_audio_tokens
            or self.cache_audio_read_tokens
            or self.output_audio_tokens
            or self.cache_write_1h_tokens
            or self.cache_write_5m_tokens
        ):
            return (
                cr + cw <= inp
                and self.reasoning_tokens <= self.output_tokens
                and min(inp, self.output_tokens, cr, cw, self.reasoning_tokens) >= 0
            )
        return _consistent(self.counts())


def _consistent(counts: Sequence[int]) -> bool:
    """Whether every exclusive share of the inclusive counts is non-negative.

    The shares: cached audio, cached text (cache reads − cached audio), uncached audio (audio
    − cached audio), 1-hour and 5-minute writes, other writes, uncached text input (input −
    reads − writes − audio + cached audio), reasoning, output audio, other output (output −
    reasoning − audio). Audio is assumed neither written to the cache nor reasoning, which is
    what providers report. genai-prices rejects a usage with a negative share of a kind it
    prices; this rejects one with a negative share of any kind, whatever the model prices.
    """
    if len(counts) < len(_KINDS):
        counts = (*counts, *(0,) * (len(_KINDS) - len(counts)))
    inp, outp, cr, cw, rs, ia, car, oa, w1h, w5m = counts
    return (
        min(inp, outp, cr, cw, rs, ia, car, oa, w1h, w5m) >= 0
        and car <= cr
        and car <= ia
        and w1h + w5m <= cw
        and cr + cw + ia - car <= inp
        and rs + oa <= outp
    )


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one attempt and where its price came from.

    Attributes:
        cost_usd: Cost in USD, exact; None when no price is known (never 0 for unknown).
        source: `genai-prices@<version>`, `fallback`, `override:<id>[@<list source>]` or
            `unpriced`.
        detail: Why a call is unpriced (unknown model, inconsistent usage), else None.
    """

    cost_usd: Decimal | None
    source: str
    detail: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TierCoefficients:
    """USD per token of each kind within one price tier (exact, not per million).

    A call's cost in the tier is `per_request + input × (input_tokens − cache_read_tokens −
    cache_write_tokens) + cache_read × cache_read_tokens + cache_write × cache_write_tokens +
    output × (output_tokens − reasoning_tokens) + reasoning × reasoning_tokens` for a call
    without audio or 1-hour/5-minute cache writes; each of those kinds takes its exclusive
    share at its own price (see `comptroller.pricing._consistent` for the shares).
    """

    above: int | None
    """The tier applies when the call's input tokens are above this; None for the base tier."""
    upto: int | None
    """…and at most this many (the next tier's `above`); None for the top tier."""
    per_request: Decimal
    """Fixed fee per call."""
    input: Decimal
    """Per uncached input token."""
    cache_read: Decimal
    """Per input token read from the prompt cache."""
    cache_write: Decimal
    """Per input token written to the prompt cache."""
    output: Decimal
    """Per output token that is not a reasoning token."""
    reasoning: Decimal
    """Per reasoning output token."""
    input_audio: Decimal = Decimal(0)
    """Per uncached input audio token."""
    cache_audio_read: Decimal = Decimal(0)
    """Per cached input audio token."""
    output_audio: Decimal = Decimal(0)
    """Per output audio token."""
    cache_write_1h: Decimal = Decimal(0)
    """Per input token written to the cache for 1 hour."""
    cache_write_5m: Decimal = Decimal(0)
    """Per input token written to the cache for 5 minutes (when priced apart from
    `cache_write`)."""


_TIER_PRICES: Final = tuple(
    field.name for field in fields(TierCoefficients) if field.name not in ("above", "upto")
)
"""The prices of a `TierCoefficients` (what a discount scales)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceCoefficients:
    """The price of one model in force at one time, per token kind and tier.

    What `comptroller reprice` needs to recompute many rows in SQL with exactly the
    arithmetic of `Pricer.price`.
    """

    source: str
    """`genai-prices@<version>`, `fallback` or `override:<id>[@<list source>]`."""
    tiers: tuple[TierCoefficients, ...]
    """Base tier first, then by ascending input-token threshold."""
    time_of_day: bool
    """True when the model's price changes with the time of day (off-peak rates): these
    coefficients then hold at the instant asked only. Otherwise they hold for the whole UTC
    date of that instant (genai-prices' price changes take effect at UTC midnight)."""

    def tier(self, input_tokens: int) -> TierCoefficients:
        """The tier a call with `input_tokens` input tokens is priced in."""
        for tier in reversed(self.tiers):
            if tier.above is None or input_tokens > tier.above:
                return tier
        return self.tiers[0]


class _Linear:
    """Cost of a usage within one price tier: const + Σ coefficient × inclusive count.

    A kind's coefficient is what one more token of it adds with its parents' counts held
    (a cache read: its price minus the input price, since it is carved out of the input).
    """

    __slots__ = (
        "cache_audio_read",
        "cache_read",
        "cache_write",
        "cache_write_1h",
        "cache_write_5m",
        "const",
        "input",
        "input_audio",
        "ordered",
        "output",
        "output_audio",
        "reasoning",
        "worst_in",
        "worst_out",
    )

    def __init__(self, const: Decimal, coefficients: Sequence[Decimal]) -> None:
        self.const = const
        self.ordered = tuple(coefficients)
        (
            self.input,
            self.output,
            self.cache_read,
            self.cache_write,
            self.reasoning,
            self.input_audio,
            self.cache_audio_read,
            self.output_audio,
            self.cache_write_1h,
            self.cache_write_5m,
        ) = self.ordered
        exclusive = self.exclusive()
        # Any input token may turn out to be of the dearest input kind (a cache write costs
        # more than plain input at Anthropic, audio more than text at OpenAI), any output
        # token of the dearest output kind: the worst case reserves at those.
        self.worst_in = max(
            exclusive[k]
            for k in (
                "input",
                "cache_read",
                "cache_write",
                "input_audio",
                "cache_audio_read",
                "cache_write_1h",
                "cache_write_5m",
            )
        )
        self.worst_out = max(exclusive[k] for k in ("output", "reasoning", "output_audio"))

    def exclusive(self) -> dict[str, Decimal]:
        """The price of one token of each kind alone (its exclusive share)."""
        i, o = self.input, self.output
        return {
            "input": i,
            "cache_read": i + self.cache_read,
            "cache_write": i + self.cache_write,
            "input_audio": i + self.input_audio,
            "cache_audio_read": i + self.cache_read + self.input_audio + self.cache_audio_read,
            "cache_write_1h": i + self.cache_write + self.cache_write_1h,
            "cache_write_5m": i + self.cache_write + self.cache_write_5m,
            "output": o,
            "reasoning": o + self.reasoning,
            "output_audio": o + self.output_audio,
        }

    def cost(self, u: Usage) -> Decimal:
        # Decimal × int is exact; skipping zero counts keeps the common call to ~2 products.
        total = self.const
        if u.input_tokens:
            total += self.input * u.input_tokens
        if u.output_tokens:
            total += self.output * u.output_tokens
        if u.cache_read_tokens:
            total += self.cache_read * u.cache_read_tokens
        if u.cache_write_tokens:
            total += self.cache_write * u.cache_write_tokens
        if u.reasoning_tokens:
            total += self.reasoning * u.reasoning_tokens
        if u.input_audio_tokens:
            total += self.input_audio * u.input_audio_tokens
        if u.cache_audio_read_tokens:
            total += self.cache_audio_read * u.cache_audio_read_tokens
        if u.output_audio_tokens:
            total += self.output_audio * u.output_audio_tokens
        if u.cache_write_1h_tokens:
            total += self.cache_write_1h * u.cache_write_1h_tokens
        if u.cache_write_5m_tokens:
            total += self.cache_write_5m * u.cache_write_5m_tokens
        return total

    def cost_of(self, counts: Sequence[int]) -> Decimal:
        total = self.const
        for coefficient, count in zip(self.ordered, counts, strict=False):
            if count:
                total += coefficient * count
        return total

    def worst(self, input_tokens: int, output_tokens: int) -> Decimal:
        return self.const + self.worst_in * input_tokens + self.worst_out * output_tokens


@dataclass(frozen=True, slots=True)
class _Schedule:
    """Linear costs per input-token tier: `brackets[i]` applies above `thresholds[i-1]`."""

    thresholds: tuple[int, ...]
    brackets: tuple[_Linear, ...]

    def linear(self, input_tokens: int) -> _Linear:
        if not self.thresholds:
            return self.brackets[0]
        index = 0
        for start in self.thresholds:
            # genai-prices: a tier applies when the input count is strictly above its start.
            if input_tokens > start:
                index += 1
            else:
                break
        return self.brackets[index]

    def coefficients(self, source: str, time_of_day: bool) -> PriceCoefficients:
        bounds = (None, *self.thresholds, None)
        tiers = []
        for i, b in enumerate(self.brackets):
            # The brackets hold each kind as a delta on its parents; the sums are exact in
            # Decimal, so both forms give the same cost to the digit.
            exclusive = b.exclusive()
            tiers.append(
                TierCoefficients(
                    above=bounds[i],
                    upto=bounds[i + 1],
                    per_request=b.const,
                    **exclusive,
                )
            )
        return PriceCoefficients(source=source, tiers=tuple(tiers), time_of_day=time_of_day)


class _GenaiModel:
    """One genai-prices model: its price in force at a time and tier, and compiled schedules."""

    __slots__ = ("_info", "_lock", "_schedules", "_tiers", "static", "time_of_day")

    def __init__(self, info: Any, *, own: bool) -> None:
        from genai_prices.types import ModelPrice, TimeOfDateConstraint

        self._info = info
        self._lock = threading.Lock()
        # Keyed by the identity of the ModelPrice object genai-prices hands back (and, for a
        # service tier, of the price variants in force); the objects are held in the value
        # so that their ids cannot be reused.
        self._schedules: dict[tuple[int, ...], tuple[Any, _Schedule]] = {}
        self.static: _Schedule | None = (
            _compile_model_price(info.prices) if isinstance(info.prices, ModelPrice) else None
        )
        self.time_of_day = self.static is None and any(
            isinstance(conditional.constraint, TimeOfDateConstraint) for conditional in info.prices
        )
        # genai-prices selects a variant for `price_context={"service_tier": tier}` when every
        # condition of its `when` holds: only variants conditioned on the tier alone. It
        # ignores the context for a model borrowed from another provider (`own` False).
        tiers: dict[str, list[Any]] = {}
        if own:
            for variant in info.price_variants or ():
                if set(variant.when) == {"service_tier"}:
                    tiers.setdefault(variant.when["service_tier"], []).append(variant)
        self._tiers = {tier: tuple(variants) for tier, variants in tiers.items()}

    @property
    def tiered(self) -> bool:
        """Whether some service tier has prices of its own."""
        return bool(self._tiers)

    def schedule(self, at: datetime, tier: str | None = None) -> _Schedule:
        if tier is not None:
            variants = self._tiers.get(tier)
            if variants is not None:
                # The price genai-prices applies: the standard price in force, overridden
                # key by key by the tier's variants in force (the first one wins). Keyed by
                # the identities of those objects; plain loops, since this runs per call.
                key: list[int] = []
                for variant in variants:
                    constraint = variant.constraint
                    if constraint is None or constraint.active(at):
                        key.append(id(variant))
                if key:
                    standard = self._info.get_prices(at)
                    key.append(id(standard))
                    hit = self._schedules.get(tuple(key))
                    if hit is not None:
                        return hit[1]
                    return self._compile(
                        tuple(key),
                        (standard, variants),
                        self._info.get_prices(at, {"service_tier": tier}),
                    )
        if self.static is not None:
            return self.static
        model_price = self._info.get_prices(at)
        hit = self._schedules.get((id(model_price),))
        if hit is not None:
            return hit[1]
        return self._compile((id(model_price),), model_price, model_price)

    def _compile(self, key: tuple[int, ...], held: Any, model_price: Any) -> _Schedule:
        compiled = _compile_model_price(model_price)
        with self._lock:
            self._schedules[key] = (held, compiled)
        return compiled


# Exclusive tokens of each kind in the probe usage the coefficients are measured around: it
# holds some of every kind, so that one more token of any kind keeps every share of it
# non-negative (genai-prices refuses a negative share).
_PROBE: Final = {
    "input_tokens": 14,  # plain, cached text, cached audio, audio, 3 kinds of writes: 2 each
    "output_tokens": 6,
    "cache_read_tokens": 4,
    "cache_write_tokens": 6,
    "reasoning_tokens": 2,
    "input_audio_tokens": 4,
    "cache_audio_read_tokens": 2,
    "output_audio_tokens": 2,
    "cache_write_1h_tokens": 2,
    "cache_write_5m_tokens": 2,
}


def _compile_model_price(model_price: Any) -> _Schedule:
    """Derive the linear coefficients of every tier from genai-prices' own arithmetic."""
    from genai_prices.types import TieredPrices
    from genai_prices.types import Usage as GenaiUsage

    def f(counts: Mapping[str, int]) -> Decimal:
        usage = GenaiUsage(**{_GENAI_KEYS[kind]: count for kind, count in counts.items()})
        total: Decimal = model_price.calc_price(usage)["total_price"]
        return total

    starts: set[int] = set()
    for value in vars(model_price).values():
        if isinstance(value, TieredPrices):
            starts.update(tier.start for tier in value.tiers)
    thresholds = tuple(sorted(starts))
    brackets: list[_Linear] = []
    for low in (0, *(start + 1 for start in thresholds)):
        # The probe and the probe plus one token stay within the bracket (the tiers of
        # genai-prices' data are 100k+ tokens apart).
        base = {**_PROBE, "input_tokens": _PROBE["input_tokens"] + low}
        f_base = f(base)
        coefficients = [f({**base, kind: base[kind] + 1}) - f_base for kind in _KINDS]
        const = f_base - sum(
            (c * base[kind] for c, kind in zip(coefficients, _KINDS, strict=True)), Decimal(0)
        )
        brackets.append(_Linear(const, coefficients))
    return _Schedule(thresholds=thresholds, brackets=tuple(brackets))


_MILLION = Decimal(1_000_000)


_snapshot_getter: Any = None


def _get_snapshot() -> Any:
    # genai-prices takes ~0.5 s to import: load it on the first price, not with the package.
    global _snapshot_getter
    if _snapshot_getter is None:
        from genai_prices import data_snapshot

        _snapshot_getter = data_snapshot.get_snapshot
    return _snapshot_getter()


def _compile_spec(spec: PriceSpec) -> _Schedule:
    per_in = spec.input_mtok / _MILLION
    per_out = spec.output_mtok / _MILLION

    def delta(price: Decimal | None, parent: Decimal) -> Decimal:
        # A kind without a price of its own is charged as its parent (the genai-prices rule).
        return Decimal(0) if price is None else price / _MILLION - parent

    zero = Decimal(0)
    # The registry has no audio or cache-lifetime prices: those tokens are charged as their
    # parents (audio input as input, a 1-hour write as a write).
    linear = _Linear(
        zero,
        (
            per_in,
            per_out,
            delta(spec.cache_read_mtok, per_in),
            delta(spec.cache_write_mtok, per_in),
            delta(spec.reasoning_mtok, per_out),
            zero,
            zero,
            zero,
            zero,
            zero,
        ),
    )
    return _Schedule(thresholds=(), brackets=(linear,))


_Resolved = tuple[str, "_GenaiModel | _Schedule"] | None


_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()


def _utc_day(at: datetime | float) -> int:
    """The proleptic ordinal of the UTC day of `at` (a naive datetime is taken as UTC)."""
    if isinstance(at, datetime):
        return (at if at.tzinfo is None else at.astimezone(UTC)).date().toordinal()
    # Epoch seconds on the hot path: integer arithmetic, no datetime.
    return _EPOCH_DAY + int(at // 86_400)


class _Override:
    """One price override, compiled: its discount factor or its own schedule."""

    __slots__ = ("factor", "first_day", "label", "last_day", "rank", "schedule", "spec")

    def __init__(self, spec: PriceOverride) -> None:
        self.spec = spec
        self.label = OVERRIDE_SOURCE_PREFIX + spec.label
        # Most specific wins: org and model (3), org and provider:* (2), model (1), provider:*.
        self.rank = (2 if spec.org is not None else 0) + (spec.model_name != "*")
        self.first_day = spec.effective_from.toordinal()
        until = spec.effective_until
        self.last_day = date.max.toordinal() if until is None else until.toordinal()
        self.factor: Decimal | None = None if spec.discount is None else 1 - spec.discount
        self.schedule: _Schedule | None = None
        if spec.input_mtok is not None and spec.output_mtok is not None:
            self.schedule = _compile_spec(
                PriceSpec(
                    input_mtok=spec.input_mtok,
                    output_mtok=spec.output_mtok,
                    cache_read_mtok=spec.cache_read_mtok,
                    cache_write_mtok=spec.cache_write_mtok,
                    reasoning_mtok=spec.reasoning_mtok,
                )
            )

    def source(self, list_source: str) -> str:
        return self.label if self.schedule is not None else f"{self.label}@{list_source}"


class Pricer:
    """Prices attempts from genai-prices, then the fallback registry; unknown is unpriced.

    Thread-safe; resolution is cached per (provider, model), so keep one `Pricer` per
    process (the control plane and the collector each do).

    Example:
        >>> from datetime import UTC, datetime
        >>> pricer = Pricer()
        >>> price = pricer.price(
        ...     "openai", "gpt-4o-mini", Usage(input_tokens=1000, output_tokens=100),
        ...     at=datetime(2025, 6, 1, tzinfo=UTC),
        ... )
        >>> price.source.startswith("genai-prices@")
        True
    """

    def __init__(
        self,
        prices: Mapping[str, PriceSpec | Mapping[str, Any]] | None = None,
        *,
        aliases: Mapping[str, str | None] | None = None,
        overrides: Sequence[PriceOverride | Mapping[str, Any]] = (),
        fee_prices: Mapping[str, Mapping[str, Decimal | str | float]] | None = None,
    ) -> None:
        """Build a pricer.

        Args:
            prices: The fallback registry, keyed `provider:model`: prices in USD per million
                tokens for models genai-prices does not know.
            aliases: Provider names mapped to genai-prices provider ids (None: genai-prices
                has no prices for it), on top of `PROVIDER_ALIASES`.
            overrides: Negotiated prices (`PriceOverride`s or their mappings, as in
                `[[control.price_overrides]]`), applied on top of both.
            fee_prices: USD per request of each non-token fee (`FEE_KINDS`), keyed
                `provider:model` (or `provider:*`), for fees genai-prices has no price for.

        Raises:
            ValueError: A registry key is not `provider:model`, or a price or an override is
                invalid (a pydantic `ValidationError` says which).
        """
        self._aliases: dict[str, str | None] = {**PROVIDER_ALIASES, **(aliases or {})}
        self._fallback: dict[tuple[str, str], _Schedule] = {}
        for key, spec in (prices or {}).items():
            provider, sep, model = key.partition(":")
            if not sep or not provider or not model:
                raise ValueError(f"fallback price key must be 'provider:model', got {key!r}")
            valid = spec if isinstance(spec, PriceSpec) else PriceSpec.model_validate(spec)
            self._fallback[(provider.lower(), model.lower())] = _compile_spec(valid)
        self._cache: dict[tuple[str, str], _Resolved] = {}
        self._snapshot: object = None
        # genai-prices' model id of each resolved (provider, model): an override naming it
        # covers every alias and snapshot genai-prices maps to it.
        self._model_ids: dict[tuple[str, str], str] = {}
        # genai-prices' model info of each resolved (provider, model), for its fees.
        self._infos: dict[tuple[str, str], Any] = {}
        self._fee_prices: dict[tuple[str, str], dict[str, Decimal]] = {}
        for key, per_call in (fee_prices or {}).items():
            provider, sep, model = key.partition(":")
            if not sep or not provider or not model:
                raise ValueError(f"fee price key must be 'provider:model', got {key!r}")
            unknown = set(per_call) - set(FEE_KINDS)
            if unknown:
                raise ValueError(
                    f"fee price of {key!r}: unknown fee {', '.join(sorted(unknown))} "
                    f"(known: {', '.join(FEE_KINDS)})"
                )
            self._fee_prices[(provider.lower(), model.lower())] = {
                kind: Decimal(str(price)) for kind, price in per_call.items()
            }
        checked = (
            validate_overrides([o if isinstance(o, PriceOverride) else dict(o) for o in overrides])
            if overrides
            else ()
        )
        self.overrides: tuple[PriceOverride, ...] = checked
        """The price overrides applied, as validated."""
        # Overrides by provider (its genai-prices id, else its lowercased name); empty when
        # there are none, which is all the hot path tests.
        self._by_provider: dict[str, tuple[_Override, ...]] = {}
        for override in checked:
            key = self.canonical_provider(override.provider) or override.provider
            self._by_provider[key] = (*self._by_provider.get(key, ()), _Override(override))
        self._provider_keys: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> Pricer:
        """A pricer with the prices, fee prices and overrides of `settings.control`."""
        control = settings.control
        return cls(
            control.prices,
            overrides=getattr(control, "price_overrides", ()),
            fee_prices=getattr(control, "fee_prices", None) or None,
        )

    @property
    def org_specific(self) -> bool:
        """Whether some override applies to one org only (the org then changes the price)."""
        return any(spec.org is not None for spec in self.overrides)

    def _override(
        self, provider: str, model: str, org: str | None, at: datetime | float
    ) -> _Override | None:
        """The override in force for a call, or None (most specific wins)."""
        key = self._provider_keys.get(provider)
        if key is None:
            key = self.canonical_provider(provider) or provider.lower()
            self._provider_keys[provider] = key
        candidates = self._by_provider.get(key)
        if candidates is None:
            return None
        name = model.lower()
        model_id = self._model_ids.get((provider, model))
        day = _utc_day(at)
        best: _Override | None = None
        for candidate in candidates:
            spec = candidate.spec
            if (
                (spec.org is None or spec.org == org)
                and spec.model_name in ("*", name, model_id)
                and candidate.first_day <= day <= candidate.last_day
                and (best is None or candidate.rank > best.rank)
            ):
                best = candidate
        return best

    def _might_override(self, provider: str) -> bool:
        key = self.canonical_provider(provider) or provider.lower()
        return key in self._by_provider

    def _explicit_for(self, provider: str, model: str) -> bool:
        key = self.canonical_provider(provider) or provider.lower()
        name = model.lower()
        return any(
            o.schedule is not None and o.spec.model_name in ("*", name)
            for o in self._by_provider.get(key, ())
        )

    def canonical_provider(self, provider: str) -> str | None:
        """The genai-prices provider id of `provider` (an OTel name or an id), or None."""
        name = provider.lower()
        return self._aliases.get(name, name)

    def _lookup(self, provider: str, model: str) -> _Resolved:
        snapshot = _get_snapshot()
        if snapshot is not self._snapshot:
            # Prices were updated (genai_prices.UpdatePrices): resolve everything again.
            self._cache.clear()
            self._snapshot = snapshot
        try:
            return self._cache[(provider, model)]
        except KeyError:
            return self._resolve(snapshot, provider, model)

    def _resolve(self, snapshot: Any, provider: str, model: str) -> _Resolved:
        key = (provider, model)
        resolved: _Resolved = None
        if not provider or not model:
            # A call without provider or model cannot be priced; genai-prices would guess.
            self._cache[key] = None
            return None
        canonical = self.canonical_provider(provider)
        if canonical is not None:
            try:
                found, info = snapshot.find_provider_model(model, None, canonical, None)
            except LookupError:
                pass
            else:
                own = any(info is candidate for candidate in found.models)
                self._model_ids[key] = str(info.id).lower()
                self._infos[key] = info
                model_info = _GenaiModel(info, own=own)
                # A price that never changes, whatever the tier, is resolved to its schedule:
                # no lookup by time or tier.
                static = model_info.static
                target = static if static is not None and not model_info.tiered else model_info
                resolved = (GENAI_PRICES_SOURCE, target)
        if resolved is None:
            lowered = model.lower()
            spec = self._fallback.get((provider.lower(), lowered))
            if spec is None and canonical is not None:
                spec = self._fallback.get((canonical, lowered))
            if spec is not None:
                resolved = (FALLBACK_SOURCE, spec)
        self._cache[key] = resolved
        return resolved

    def _schedule(
        self, provider: str, model: str, at: datetime | float, tier: str | None = None
    ) -> tuple[str, _Schedule] | None:
        resolved = self._lookup(provider, model)
        if resolved is None:
            return None
        source, target = resolved
        if isinstance(target, _Schedule):
            return source, target
        if tier is None and target.static is not None:
            return source, target.static
        # Only a price that changes with time needs the instant as a datetime (on the hot
        # path callers pass epoch seconds, and most prices never change).
        when = at if isinstance(at, datetime) else datetime.fromtimestamp(at, UTC)
        return source, target.schedule(when, tier)

    def knows(self, provider: str, model: str) -> bool:
        """Whether a price is known for (provider, model).

        Known: from genai-prices, the registry, or an override with prices of its own (on
        some day, for some org).
        """
        if self._lookup(provider, model) is not None:
            return True
        return (
            bool(self._by_provider)
            and bool(provider and model)
            and self._explicit_for(provider, model)
        )

    def makes_text(self, provider: str, model: str, *, at: datetime | float) -> bool:
        """Whether (provider, model) answers in tokens (a chat model), as its price tells.

        It does when priced for output tokens, which an embedding request never produces. A
        model whose id names embeddings does not (genai-prices gives some embedding models
        an output price), nor does a model without a known price.
        """
        if "embed" in model.lower():
            return False
        output = self.worst_case(
            provider, model, input_tokens=0, max_output_tokens=1_000_000, at=at
        )
        return bool(output)

    def priced_model(
        self, provider: str | None, response_model: str | None, request_model: str | None
    ) -> str | None:
        """The model a call is priced as: the response model, else the request model.

        The response model names what actually ran (often a dated snapshot of the requested
        alias); when no price is known for it, the request model's price applies. Every
        part prices a call by this rule, so they agree on which model a cost belongs to.

        Returns:
            The first of the two with a known price, or None when neither has one.
        """
        if not provider:
            return None
        for model in (response_model, request_model):
            if model and self.knows(provider, model):
                return model
        return None

    def price(
        self,
        provider: str,
        model: str,
        usage: Usage,
        at: datetime | float,
        org: str | None = None,
    ) -> Price:
        """The cost of one attempt.

        Args:
            provider: Provider name (OpenTelemetry `gen_ai.provider.name` or genai-prices id).
            model: The model id (the response model when the provider reported one).
            usage: Token usage as the provider reported it, inclusive counts, and the service
                tier it ran in (`usage.service_tier`: that tier's prices when genai-prices
                has them, as `calc_price(…, price_context={"service_tier": tier})`).
            at: When the request was made (prices may change with the date or time of day): a
                datetime, or seconds since the epoch.
            org: The org the call was made for (an org's price override applies to it).

        Returns:
            The exact cost and its source; `Price(None, "unpriced")` when no price is known or
            the usage is inconsistent (cache tokens above input tokens) — never 0.
        """
        found = self._schedule(provider, model, at, usage.service_tier)
        if self._by_provider and provider and model:
            override = self._override(provider, model, org, at)
            if override is not None:
                return self._overridden(override, found, provider, model, usage)
        if found is None:
            return Price(None, UNPRICED_SOURCE, f"no price known for {provider}:{model}")
        if not usage.consistent:
            return Price(None, UNPRICED_SOURCE, f"inconsistent usage {usage}")
        source, schedule = found
        return Price(schedule.linear(usage.input_tokens).cost(usage), source)

    def _overridden(
        self,
        override: _Override,
        found: tuple[str, _Schedule] | None,
        provider: str,
        model: str,
        usage: Usage,
    ) -> Price:
        if not usage.consistent:
            return Price(None, UNPRICED_SOURCE, f"inconsistent usage {usage}")
        if override.schedule is not None:
            cost = override.schedule.linear(usage.input_tokens).cost(usage)
            return Price(cost, override.source(""))
        if found is None:
            return Price(
                None,
                UNPRICED_SOURCE,
                f"no list price known for {provider}:{model} to apply the discount of "
                f"{override.label}",
            )
        source, schedule = found
        assert override.factor is not None
        cost = schedule.linear(usage.input_tokens).cost(usage) * override.factor
        return Price(cost, override.source(source))

    def price_fees(
        self,
        provider: str,
        model: str,
        fees: Mapping[str, int],
        at: datetime | float,
        org: str | None = None,
    ) -> Price | None:
        """The cost of the non-token fees of one attempt (web searches, file searches, …).

        Priced apart from the tokens, so that reports can show them separately: from
        genai-prices' price of the model in force at `at` (its `<kind>_kcount`), else the
        `fee_prices` given to the pricer. A discount override in force applies to them too;
        an override with prices of its own covers tokens only (fees stay at list price).

        Args:
            provider: Provider name.
            model: The model priced (as for `price`).
            fees: Count of each fee (`FEE_KINDS`), e.g. `{"web_searches": 2}`.
            at: When the request was made.
            org: The org of the call.

        Returns:
            None when no fee was reported; else the cost and its source, unpriced (cost None,
            never 0) when some reported fee has no known price.
        """
        counts = {kind: count for kind, count in fees.items() if count}
        if not counts:
            return None
        unknown = set(counts) - set(FEE_KINDS)
        if unknown or min(counts.values()) < 0:
            return Price(None, UNPRICED_SOURCE, f"unknown or negative fees {counts}")
        when = at if isinstance(at, datetime) else datetime.fromtimestamp(at, UTC)
        resolved = self._lookup(provider, model) if provider and model else None
        info = self._infos.get((provider, model)) if resolved is not None else None
        listed: Decimal | None = None
        source = GENAI_PRICES_SOURCE
        if info is not None:
            model_price = info.get_prices(when)
            if all(getattr(model_price, f"{kind}_kcount", None) is not None for kind in counts):
                from genai_prices.types import Usage as GenaiUsage

                total: Decimal = model_price.calc_price(GenaiUsage(**counts))["total_price"]
                listed = total
        if listed is None:
            own = self._fee_prices.get((provider.lower(), model.lower())) or self._fee_prices.get(
                (provider.lower(), "*")
            )
            if own is None or not set(counts) <= set(own):
                return Price(
                    None,
                    UNPRICED_SOURCE,
                    f"no price known for the fees {sorted(counts)} of {provider}:{model}",
                )
            listed = sum((own[kind] * count for kind, count in counts.items()), Decimal(0))
            source = FALLBACK_SOURCE
        if self._by_provider:
            override = self._override(provider, model, org, at)
            if override is not None and override.factor is not None:
                return Price(listed * override.factor, override.source(source))
        return Price(listed, source)

    def price_counts(
        self,
        provider: str,
        model: str,
        counts: Sequence[tuple[int, ...]],
        at_us: Sequence[int],
        *,
        service_tier: str | None = None,
        org: str | None = None,
    ) -> list[Price]:
        """The costs of many attempts of one model: `price` of each, resolved once.

        Args:
            provider: Provider name.
            model: The model id.
            counts: Token counts per attempt, inclusive as in `Usage`, in the order of
                `Usage.counts`: (input, output, cache_read, cache_write, reasoning[,
                input_audio, cache_audio_read, output_audio, cache_write_1h,
                cache_write_5m]); kinds left off are 0.
            at_us: When each attempt was made, µs since the epoch (used only when the
                model's price changes with time).
            service_tier: The service tier every one of these attempts ran in.
            org: The org every one of these attempts was made for.

        Returns:
            One `Price` per attempt, equal to what `price` returns for it.
        """
        if self._by_provider and self._might_override(provider):
            # Which override applies depends on each row's day: the one-by-one path.
            return [
                self.price(
                    provider,
                    model,
                    Usage(**dict(zip(_KINDS, row, strict=False)), service_tier=service_tier),
                    at / 1e6,
                    org,
                )
                for row, at in zip(counts, at_us, strict=True)
            ]
        resolved = self._lookup(provider, model)
        if resolved is None:
            unknown = Price(None, UNPRICED_SOURCE, f"no price known for {provider}:{model}")
            return [unknown] * len(counts)
        source, target = resolved
        schedule: _Schedule | None
        if isinstance(target, _Schedule):
            schedule = target
        else:
            # Tier prices may change with the date: those rows take the one-by-one path.
            schedule = target.static if service_tier is None else None
        out: list[Price] = []
        for row, at in zip(counts, at_us, strict=True):
            if schedule is not None and _consistent(row):
                out.append(Price(schedule.linear(row[0]).cost_of(row), source))
                continue
            # A price that changes with the date, the time of day or the tier, or counts that
            # cannot be priced: the one-by-one path says why.
            usage = Usage(**dict(zip(_KINDS, row, strict=False)), service_tier=service_tier)
            out.append(self.price(provider, model, usage, datetime.fromtimestamp(at / 1e6, UTC)))
        return out

    def coefficients(
        self,
        provider: str,
        model: str,
        at: datetime,
        *,
        service_tier: str | None = None,
        org: str | None = None,
    ) -> PriceCoefficients | None:
        """The per-token price of every token kind and tier of a model, in force at `at`.

        `price` gives the same cost as these coefficients, to the digit; they let a caller
        price many calls at once (in SQL) instead of one by one.

        Args:
            provider: Provider name (OpenTelemetry `gen_ai.provider.name` or genai-prices id).
            model: The model id.
            at: The instant; see `PriceCoefficients.time_of_day` for how long they hold
                (a price override is in force for whole UTC days).
            service_tier: The service tier (None: the standard price).
            org: The org of the calls (an org's price override applies to it).

        Returns:
            The coefficients, or None when no price is known for (provider, model).
        """
        resolved = self._lookup(provider, model)
        override = (
            self._override(provider, model, org, at)
            if self._by_provider and provider and model
            else None
        )
        if override is not None and override.schedule is not None:
            return override.schedule.coefficients(override.source(""), time_of_day=False)
        if resolved is None:
            return None
        source, target = resolved
        if isinstance(target, _Schedule):
            found = target.coefficients(source, time_of_day=False)
        else:
            found = target.schedule(at, service_tier).coefficients(
                source, time_of_day=target.time_of_day
            )
        if override is None:
            return found
        assert override.factor is not None
        factor = override.factor
        return PriceCoefficients(
            source=override.source(source),
            tiers=tuple(
                replace(tier, **{name: getattr(tier, name) * factor for name in _TIER_PRICES})
                for tier in found.tiers
            ),
            time_of_day=found.time_of_day,
        )

    def worst_case(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        at: datetime | float,
        service_tier: str | None = None,
        org: str | None = None,
    ) -> Decimal | None:
        """The most a call could cost: what a budget reserves before it runs.

        Every input token is charged at the dearest input kind (a cache write can cost more
        than plain input, audio more than text) and every output token at the dearest output
        kind, at the prices of the requested service tier.

        Args:
            provider: Provider name.
            model: Model id.
            input_tokens: An upper bound of the input tokens.
            max_output_tokens: The request's `max_tokens` (or the model's output limit).
            at: When the request is made (a datetime, or seconds since the epoch).
            service_tier: The service tier the request asks for (`flex`, `priority`, …):
                its prices when genai-prices has them; None (or a tier without prices of its
                own, such as `auto` or `default`): the standard price.
            org: The org the call is made for (an org's price override applies to it).

        Returns:
            The worst-case cost in USD, or None when no price is known.
        """
        found = self._schedule(provider, model, at, service_tier)
        if self._by_provider and provider and model:
            override = self._override(provider, model, org, at)
            if override is not None:
                if override.schedule is not None:
                    found = ("", override.schedule)
                elif found is not None:
                    assert override.factor is not None
                    worst = found[1].linear(input_tokens).worst(input_tokens, max_output_tokens)
                    return worst * override.factor
        if found is None:
            return None
        return found[1].linear(input_tokens).worst(input_tokens, max_output_tokens)
