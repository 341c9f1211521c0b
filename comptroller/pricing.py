"""What an LLM call cost: the one pricer of comptroller (control plane, collector, reprice).

`genai_prices.calc_price` re-resolves the model and walks its unit registry on every call
(~70 µs). The cost of a call is linear in its token counts within one price tier, so the
`Pricer` asks genai-prices' own `ModelPrice.calc_price` once per (model price, tier) for the
cost of a handful of probe usages, derives the per-token coefficient of every token kind from
them, and prices each call with five Decimal multiplications. Because the coefficients come
from genai-prices' own arithmetic, every rule it applies carries over unchanged: cache reads
and writes carved out of the input count, reasoning out of the output count, a kind without
its own price charged as its parent, per-request fees, tiers chosen by the input count, and
prices that change with the request time (the price in force at `at` is looked up per call,
its coefficients cached).

Models genai-prices does not know are priced from the configuration's fallback registry
(`[control.prices."provider:model"]`, USD per million tokens). A model known to neither is
`Price(None, "unpriced")`: never zero.

The control plane prices each attempt with it, the collector prices the usage rows it derives
from third-party spans with it (at the span's start time), and `comptroller reprice` reads its
per-kind `coefficients` to recompute past rows in SQL: one truth, one place to fix a price.

This module is light: genai-prices (~0.5 s to import) is loaded on the first price, and
nothing here imports langchain, duckdb or polars.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from typing import Any, Final

from comptroller.config._control import PriceSpec

__all__ = [
    "FALLBACK_SOURCE",
    "GENAI_PRICES_SOURCE",
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Token usage of one provider attempt, as the provider reported it.

    Counts are *inclusive*, as in the OpenTelemetry GenAI conventions: `input_tokens`
    includes the cache reads and writes, `output_tokens` includes the reasoning tokens.
    (Anthropic reports input exclusive of cache tokens: add them before building this.)
    """

    input_tokens: int = 0
    """All input (prompt) tokens, cached ones included."""
    output_tokens: int = 0
    """All output (completion) tokens, reasoning included."""
    cache_read_tokens: int = 0
    """Input tokens served from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's prompt cache."""
    reasoning_tokens: int = 0
    """Output tokens spent on reasoning (thinking)."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens (what a tokens-per-interval rate limit counts)."""
        return self.input_tokens + self.output_tokens

    @property
    def consistent(self) -> bool:
        """Whether the counts can be priced: none negative, the parts within their totals."""
        return _consistent(
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )


def _consistent(inp: int, outp: int, cache_read: int, cache_write: int, reasoning: int) -> bool:
    return (
        cache_read + cache_write <= inp
        and reasoning <= outp
        and min(inp, outp, cache_read, cache_write, reasoning) >= 0
    )


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one attempt and where its price came from.

    Attributes:
        cost_usd: Cost in USD, exact; None when no price is known (never 0 for unknown).
        source: `genai-prices@<version>`, `fallback` or `unpriced`.
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
    output × (output_tokens − reasoning_tokens) + reasoning × reasoning_tokens`.
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


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceCoefficients:
    """The price of one model in force at one time, per token kind and tier.

    What `comptroller reprice` needs to recompute many rows in SQL with exactly the
    arithmetic of `Pricer.price`.
    """

    source: str
    """`genai-prices@<version>` or `fallback`."""
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


@dataclass(frozen=True, slots=True)
class _Linear:
    """Cost of a usage within one price tier: const + Σ coefficient × count."""

    const: Decimal
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    reasoning: Decimal

    def cost(self, u: Usage) -> Decimal:
        return self.cost_of(
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        )

    def cost_of(
        self, inp: int, outp: int, cache_read: int, cache_write: int, reasoning: int
    ) -> Decimal:
        # Decimal × int is exact; skipping zero counts keeps the common call to ~2 products.
        total = self.const
        if inp:
            total += self.input * inp
        if outp:
            total += self.output * outp
        if cache_read:
            total += self.cache_read * cache_read
        if cache_write:
            total += self.cache_write * cache_write
        if reasoning:
            total += self.reasoning * reasoning
        return total

    def worst(self, input_tokens: int, output_tokens: int) -> Decimal:
        # Any input token may turn out to be a cache write (dearer than input at Anthropic),
        # any output token a reasoning token: reserve at the dearest kind.
        per_in = max(self.input, self.input + self.cache_read, self.input + self.cache_write)
        per_out = max(self.output, self.output + self.reasoning)
        return self.const + per_in * input_tokens + per_out * output_tokens


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
        tiers = tuple(
            TierCoefficients(
                above=bounds[i],
                upto=bounds[i + 1],
                per_request=b.const,
                input=b.input,
                # The brackets hold each kind as a delta on its parent (input, output); the
                # sums are exact in Decimal, so both forms give the same cost to the digit.
                cache_read=b.input + b.cache_read,
                cache_write=b.input + b.cache_write,
                output=b.output,
                reasoning=b.output + b.reasoning,
            )
            for i, b in enumerate(self.brackets)
        )
        return PriceCoefficients(source=source, tiers=tiers, time_of_day=time_of_day)


class _GenaiModel:
    """One genai-prices model: its price in force at a time, and compiled schedules."""

    __slots__ = ("_info", "_lock", "_schedules", "static", "time_of_day")

    def __init__(self, info: Any) -> None:
        from genai_prices.types import ModelPrice, TimeOfDateConstraint

        self._info = info
        self._lock = threading.Lock()
        # Keyed by the identity of the ModelPrice object genai-prices hands back; the
        # object is held in the value so that its id cannot be reused.
        self._schedules: dict[int, tuple[Any, _Schedule]] = {}
        self.static: _Schedule | None = (
            _compile_model_price(info.prices) if isinstance(info.prices, ModelPrice) else None
        )
        self.time_of_day = self.static is None and any(
            isinstance(conditional.constraint, TimeOfDateConstraint) for conditional in info.prices
        )

    def schedule(self, at: datetime) -> _Schedule:
        if self.static is not None:
            return self.static
        model_price = self._info.get_prices(at)
        hit = self._schedules.get(id(model_price))
        if hit is not None:
            return hit[1]
        compiled = _compile_model_price(model_price)
        with self._lock:
            self._schedules[id(model_price)] = (model_price, compiled)
        return compiled


def _compile_model_price(model_price: Any) -> _Schedule:
    """Derive the linear coefficients of every tier from genai-prices' own arithmetic."""
    from genai_prices.types import TieredPrices
    from genai_prices.types import Usage as GenaiUsage

    def f(inp: int, out: int = 0, cr: int = 0, cw: int = 0, rs: int = 0) -> Decimal:
        usage = GenaiUsage(
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=cr,
            cache_write_tokens=cw,
            output_reasoning_tokens=rs,
        )
        total: Decimal = model_price.calc_price(usage)["total_price"]
        return total

    starts: set[int] = set()
    for value in vars(model_price).values():
        if isinstance(value, TieredPrices):
            starts.update(tier.start for tier in value.tiers)
    thresholds = tuple(sorted(starts))
    brackets: list[_Linear] = []
    for low in (0, *(start + 1 for start in thresholds)):
        a, b = low, low + 1
        f_a, f_b = f(a), f(b)
        per_input = f_b - f_a
        per_output = f(a, out=1) - f_a
        brackets.append(
            _Linear(
                const=f_a - per_input * a,
                input=per_input,
                output=per_output,
                cache_read=f(b, cr=1) - f_b,
                cache_write=f(b, cw=1) - f_b,
                reasoning=f(a, out=1, rs=1) - f(a, out=1),
            )
        )
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

    linear = _Linear(
        const=Decimal(0),
        input=per_in,
        output=per_out,
        cache_read=delta(spec.cache_read_mtok, per_in),
        cache_write=delta(spec.cache_write_mtok, per_in),
        reasoning=delta(spec.reasoning_mtok, per_out),
    )
    return _Schedule(thresholds=(), brackets=(linear,))


_Resolved = tuple[str, "_GenaiModel | _Schedule"] | None


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
    ) -> None:
        """Build a pricer.

        Args:
            prices: The fallback registry, keyed `provider:model`: prices in USD per million
                tokens for models genai-prices does not know.
            aliases: Provider names mapped to genai-prices provider ids (None: genai-prices
                has no prices for it), on top of `PROVIDER_ALIASES`.

        Raises:
            ValueError: A registry key is not `provider:model`, or a price is invalid.
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

    @classmethod
    def from_settings(cls, settings: Any) -> Pricer:
        """A pricer with the fallback registry of `settings.control.prices`."""
        return cls(settings.control.prices)

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
                _, info = snapshot.find_provider_model(model, None, canonical, None)
            except LookupError:
                pass
            else:
                model_info = _GenaiModel(info)
                # A price that never changes is resolved to its schedule: no lookup by time.
                static = model_info.static
                resolved = (GENAI_PRICES_SOURCE, model_info if static is None else static)
        if resolved is None:
            lowered = model.lower()
            spec = self._fallback.get((provider.lower(), lowered))
            if spec is None and canonical is not None:
                spec = self._fallback.get((canonical, lowered))
            if spec is not None:
                resolved = (FALLBACK_SOURCE, spec)
        self._cache[key] = resolved
        return resolved

    def _schedule(self, provider: str, model: str, at: datetime) -> tuple[str, _Schedule] | None:
        resolved = self._lookup(provider, model)
        if resolved is None:
            return None
        source, target = resolved
        if isinstance(target, _Schedule):
            return source, target
        return source, target.schedule(at)

    def knows(self, provider: str, model: str) -> bool:
        """Whether a price is known for (provider, model), from genai-prices or the registry."""
        return self._lookup(provider, model) is not None

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

    def price(self, provider: str, model: str, usage: Usage, at: datetime) -> Price:
        """The cost of one attempt.

        Args:
            provider: Provider name (OpenTelemetry `gen_ai.provider.name` or genai-prices id).
            model: The model id (the response model when the provider reported one).
            usage: Token usage as the provider reported it, inclusive counts.
            at: When the request was made (prices may change with the date or time of day).

        Returns:
            The exact cost and its source; `Price(None, "unpriced")` when no price is known or
            the usage is inconsistent (cache tokens above input tokens) — never 0.
        """
        found = self._schedule(provider, model, at)
        if found is None:
            return Price(None, UNPRICED_SOURCE, f"no price known for {provider}:{model}")
        if not usage.consistent:
            return Price(None, UNPRICED_SOURCE, f"inconsistent usage {usage}")
        source, schedule = found
        return Price(schedule.linear(usage.input_tokens).cost(usage), source)

    def price_counts(
        self,
        provider: str,
        model: str,
        counts: Sequence[tuple[int, int, int, int, int]],
        at_us: Sequence[int],
    ) -> list[Price]:
        """The costs of many attempts of one model: `price` of each, resolved once.

        Args:
            provider: Provider name.
            model: The model id.
            counts: (input, output, cache_read, cache_write, reasoning) tokens per attempt,
                inclusive as in `Usage`.
            at_us: When each attempt was made, µs since the epoch (used only when the
                model's price changes with time).

        Returns:
            One `Price` per attempt, equal to what `price` returns for it.
        """
        resolved = self._lookup(provider, model)
        if resolved is None:
            unknown = Price(None, UNPRICED_SOURCE, f"no price known for {provider}:{model}")
            return [unknown] * len(counts)
        source, target = resolved
        schedule = target if isinstance(target, _Schedule) else target.static
        out: list[Price] = []
        for (inp, outp, cr, cw, rs), at in zip(counts, at_us, strict=True):
            if schedule is not None and _consistent(inp, outp, cr, cw, rs):
                out.append(Price(schedule.linear(inp).cost_of(inp, outp, cr, cw, rs), source))
                continue
            # A price that changes with the date or the time of day, or counts that cannot be
            # priced: the one-by-one path says why.
            usage = Usage(
                input_tokens=inp,
                output_tokens=outp,
                cache_read_tokens=cr,
                cache_write_tokens=cw,
                reasoning_tokens=rs,
            )
            out.append(self.price(provider, model, usage, datetime.fromtimestamp(at / 1e6, UTC)))
        return out

    def coefficients(self, provider: str, model: str, at: datetime) -> PriceCoefficients | None:
        """The per-token price of every token kind and tier of a model, in force at `at`.

        `price` gives the same cost as these coefficients, to the digit; they let a caller
        price many calls at once (in SQL) instead of one by one.

        Args:
            provider: Provider name (OpenTelemetry `gen_ai.provider.name` or genai-prices id).
            model: The model id.
            at: The instant; see `PriceCoefficients.time_of_day` for how long they hold.

        Returns:
            The coefficients, or None when no price is known for (provider, model).
        """
        resolved = self._lookup(provider, model)
        if resolved is None:
            return None
        source, target = resolved
        if isinstance(target, _Schedule):
            return target.coefficients(source, time_of_day=False)
        return target.schedule(at).coefficients(source, time_of_day=target.time_of_day)

    def worst_case(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        at: datetime,
    ) -> Decimal | None:
        """The most a call could cost: what a budget reserves before it runs.

        Every input token is charged at the dearest input kind (a cache write can cost more
        than plain input) and every output token at the dearest output kind.

        Args:
            provider: Provider name.
            model: Model id.
            input_tokens: Estimated input tokens.
            max_output_tokens: The request's `max_tokens` (or the model's output limit).
            at: When the request is made.

        Returns:
            The worst-case cost in USD, or None when no price is known.
        """
        found = self._schedule(provider, model, at)
        if found is None:
            return None
        return found[1].linear(input_tokens).worst(input_tokens, max_output_tokens)
