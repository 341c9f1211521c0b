"""Negotiated prices: `[[control.price_overrides]]`, validated.

An override changes the price of one model (`provider:model`) or of every model of a
provider (`provider:*`), optionally for one org only, from a date on (and optionally until
one): either a discount on the list price (genai-prices, else the fallback registry) or
prices of its own in USD per million tokens. Dates are UTC days, inclusive at both ends, as
genai-prices' own price changes take effect at UTC midnight: a repricing groups rows by UTC
date and each such day is wholly inside or outside every window.

This module imports nothing of comptroller: `comptroller.config._control` holds the field.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = ["PRICE_OVERRIDES_MARKDOWN", "PriceOverride", "PriceOverrides"]

_PRICE_FIELDS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "reasoning_mtok",
)


class PriceOverride(BaseModel):
    """One negotiated price (`[[control.price_overrides]]` in the file).

    Either `discount` (a fraction off the list price) or explicit prices (`input_mtok` and
    `output_mtok`, optionally `cache_read_mtok`, `cache_write_mtok`, `reasoning_mtok`: USD
    per million tokens, a kind left unset charged as its parent, as in `[control.prices]`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    """`provider:model`, or `provider:*` for every model of the provider. The model is the
    one called, or the genai-prices model it resolves to (`openai:gpt-4o` also covers
    `gpt-4o-2024-08-06`); the provider an OpenTelemetry name or a genai-prices id."""
    org: str | None = None
    """Only calls of this org (default: every org). An org's override wins over one for
    every org."""
    id: str | None = None
    """Name recorded in the price source (`override:<id>…`). Default: `<model>`, or
    `<model>/<org>` for an org's override."""
    discount: Decimal | None = Field(default=None, ge=0, lt=1)
    """Fraction off the list price, e.g. 0.2 for 20 % off."""
    input_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million input tokens (uncached)."""
    output_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million output tokens."""
    cache_read_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million input tokens read from the prompt cache (default: the input price)."""
    cache_write_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million input tokens written to the prompt cache (default: the input price)."""
    reasoning_mtok: Decimal | None = Field(default=None, ge=0)
    """USD per million reasoning output tokens (default: the output price)."""
    effective_from: dt.date
    """First UTC day the price applies (inclusive)."""
    effective_until: dt.date | None = None
    """Last UTC day the price applies (inclusive); default: open-ended."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        provider, sep, model = self.model.partition(":")
        if not sep or not provider.strip() or not model.strip() or ":" in model:
            raise ValueError(
                f"price override model must be 'provider:model' or 'provider:*', "
                f'got {self.model!r} (e.g. model = "openai:gpt-4o")'
            )
        if "*" in model and model != "*":
            raise ValueError(
                f"price override model {self.model!r}: '*' stands alone for every model of "
                f"the provider ('{provider}:*'); name one model otherwise"
            )
        explicit = [name for name in _PRICE_FIELDS if getattr(self, name) is not None]
        if self.discount is not None and explicit:
            raise ValueError(
                f"price override {self.label!r} sets both discount and {', '.join(explicit)}: "
                f"give either a discount on the list price or prices of its own"
            )
        if self.discount is None and not explicit:
            raise ValueError(
                f"price override {self.label!r} sets no price: give discount = 0.2 (20 % off "
                f"the list price) or input_mtok and output_mtok (USD per million tokens)"
            )
        if explicit and (self.input_mtok is None or self.output_mtok is None):
            raise ValueError(
                f"price override {self.label!r} gives prices of its own: set both input_mtok "
                f"and output_mtok (USD per million tokens)"
            )
        if self.effective_until is not None and self.effective_until < self.effective_from:
            raise ValueError(
                f"price override {self.label!r}: effective_until {self.effective_until} is "
                f"before effective_from {self.effective_from}"
            )
        if self.id is not None and (not self.id.strip() or "@" in self.id):
            raise ValueError(
                f"price override id {self.id!r} must be non-empty and without '@' (the price "
                f"source puts the list price's source after an '@')"
            )
        return self

    @property
    def provider(self) -> str:
        """The provider part of `model`, lowercased."""
        return self.model.partition(":")[0].strip().lower()

    @property
    def model_name(self) -> str:
        """The model part of `model`, lowercased (`*` for every model)."""
        return self.model.partition(":")[2].strip().lower()

    @property
    def label(self) -> str:
        """The name of this override in a price source: `id`, else `<model>[/<org>]`."""
        if self.id is not None:
            return self.id
        return self.model if self.org is None else f"{self.model}/{self.org}"

    def active_on(self, day: dt.date) -> bool:
        """Whether the override applies on this UTC day."""
        return self.effective_from <= day and (
            self.effective_until is None or day <= self.effective_until
        )


def _no_overlap(overrides: tuple[PriceOverride, ...]) -> tuple[PriceOverride, ...]:
    """Refuse two overrides of one (model, org) whose windows share a day: which would win?"""
    by_key: dict[tuple[str, str, str | None], list[PriceOverride]] = {}
    for override in overrides:
        by_key.setdefault((override.provider, override.model_name, override.org), []).append(
            override
        )
    for group in by_key.values():
        ordered = sorted(group, key=lambda o: o.effective_from)
        for earlier, later in itertools.pairwise(ordered):
            if earlier.effective_until is None or earlier.effective_until >= later.effective_from:
                until = earlier.effective_until or "open-ended"
                raise ValueError(
                    f"price overrides {earlier.label!r} ({earlier.effective_from} to {until}) "
                    f"and {later.label!r} (from {later.effective_from}) overlap for "
                    f"{earlier.model}{'' if earlier.org is None else f' org {earlier.org}'}: "
                    f"end the first with effective_until before {later.effective_from}"
                )
    return overrides


PriceOverrides = Annotated[tuple[PriceOverride, ...], AfterValidator(_no_overlap)]
"""Every override of a deployment, checked together (no two of one key and org overlap)."""


def validate_overrides(
    overrides: Sequence[PriceOverride | dict[str, object]],
) -> tuple[PriceOverride, ...]:
    """Overrides given as models or mappings, validated as the settings validate them."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[tuple[PriceOverride, ...]] = TypeAdapter(PriceOverrides)
    return adapter.validate_python(tuple(overrides))


PRICE_OVERRIDES_MARKDOWN = """\
## Price overrides

A negotiated discount or a price of your own for a model, applied by the control plane (the
cost of each call and the worst case a budget reserves), by the collector and by
`comptroller reprice`:

```toml
[[control.price_overrides]]
model = "openai:gpt-4o"       # or "openai:*" for every model of the provider
org = "acme"                  # optional: this org's calls only
discount = 0.20               # 20 % off the list price (genai-prices, else control.prices)
effective_from = 2026-07-01   # first UTC day, inclusive
effective_until = 2026-12-31  # optional: last UTC day, inclusive

[[control.price_overrides]]
model = "anthropic:claude-sonnet-4-5"
id = "anthropic-2026-contract"  # optional name in the price source
input_mtok = 2.4              # USD per million tokens, as in [control.prices]
output_mtok = 12
effective_from = 2026-01-01
```

- `model` names the model called or the genai-prices model it resolves to, so
  `openai:gpt-4o` covers `gpt-4o-2024-08-06`.
- One override of a call applies: the most specific one in force that day, org and model
  first, then org and `provider:*`, then model, then `provider:*`.
- Either `discount` (0 to below 1) or prices of its own (`input_mtok` and `output_mtok`,
  optionally `cache_read_mtok`, `cache_write_mtok`, `reasoning_mtok`), not both; two
  overrides of one model and org may not share a day.
- Dates are UTC days (genai-prices' price changes take effect at UTC midnight too).
- The row's `price_source` records it: `override:<id>@<list source>` for a discount (e.g.
  `override:openai:gpt-4o/acme@genai-prices@0.2.3`), `override:<id>` for prices of its
  own; `<id>` defaults to `<model>` or `<model>/<org>`. Find them with
  `comptroller sql "SELECT price_source, sum(cost_usd) FROM llm_usage
  WHERE price_source LIKE 'override:%' GROUP BY ALL"`.
- After adding or changing one, `comptroller reprice --since <day>` applies it to the rows
  already landed; each changed row keeps the cost and source it had (`repriced_from_usd`,
  `repriced_from_source`) and `price_version` names the overrides
  (`overrides-<digest>`).
"""
"""The "Price overrides" section of docs/CONFIGURATION.md."""
