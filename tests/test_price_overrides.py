"""Price overrides: validation in settings, and the pricer applying the one in force."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from pydantic import ValidationError

from comptroller.config import load_settings
from comptroller.errors import ConfigError
from comptroller.pricing import (
    GENAI_PRICES_SOURCE,
    OVERRIDE_SOURCE_PREFIX,
    UNPRICED_SOURCE,
    Pricer,
    Usage,
)

JULY = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
USAGE = Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000)


def listed(model: str, provider: str, at: dt.datetime, usage: Usage = USAGE) -> Decimal:
    """The list price genai-prices itself gives."""
    genai = GenaiUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
    )
    return Decimal(
        calc_price(
            genai, model_ref=model, provider_id=provider, genai_request_timestamp=at
        ).total_price
    )


def override(**fields: Any) -> dict[str, Any]:
    return {"effective_from": "2026-07-01", **fields}


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            override(model="openai:gpt-4o", discount="0.2", input_mtok="1", output_mtok="2"),
            "sets both discount and input_mtok, output_mtok",
        ),
        (override(model="openai:gpt-4o"), "sets no price"),
        (override(model="openai:gpt-4o", input_mtok="1"), "set both input_mtok and output_mtok"),
        (override(model="openai:gpt-4o", discount="1"), "less than 1"),
        (override(model="openai:gpt-4o", discount="-0.1"), "greater than or equal to 0"),
        (override(model="gpt-4o", discount="0.1"), "must be 'provider:model' or 'provider:*'"),
        (override(model="openai:", discount="0.1"), "must be 'provider:model'"),
        (override(model="openai:gpt-*", discount="0.1"), "'*' stands alone"),
        (
            override(model="openai:gpt-4o", discount="0.1", effective_until="2026-06-30"),
            "effective_until 2026-06-30 is before effective_from 2026-07-01",
        ),
        (override(model="openai:gpt-4o", discount="0.1", id="a@b"), "without '@'"),
    ],
)
def test_an_invalid_override_is_refused_saying_what_to_set(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Pricer(overrides=[fields])


def test_overlapping_windows_of_one_model_and_org_are_refused() -> None:
    first = override(model="openai:gpt-4o", discount="0.1", effective_until="2026-09-30")
    second = override(model="openai:gpt-4o", discount="0.2", effective_from="2026-09-30")
    with pytest.raises(ValidationError, match="overlap for openai:gpt-4o: end the first"):
        Pricer(overrides=[second, first])
    open_ended = override(model="openai:gpt-4o", discount="0.1")
    with pytest.raises(ValidationError, match=r"\(2026-07-01 to open-ended\)"):
        Pricer(overrides=[open_ended, {**second, "effective_from": "2027-01-01"}])


def test_windows_that_touch_or_differ_by_org_are_accepted() -> None:
    pricer = Pricer(
        overrides=[
            override(model="openai:gpt-4o", discount="0.1", effective_until="2026-09-29"),
            override(model="openai:gpt-4o", discount="0.2", effective_from="2026-09-30"),
            override(model="openai:gpt-4o", discount="0.3", org="acme"),
        ]
    )
    assert len(pricer.overrides) == 3


def test_settings_file_error_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "comptroller.toml"
    config.write_text(
        "[[control.price_overrides]]\n"
        'model = "openai:gpt-4o"\n'
        "discount = 1.5\n"
        "effective_from = 2026-07-01\n"
    )
    with pytest.raises(ConfigError, match=r"comptroller.toml: control.price_overrides.0.discount"):
        load_settings(config)


def test_settings_file_overrides_reach_the_pricer(tmp_path: Path) -> None:
    config = tmp_path / "comptroller.toml"
    config.write_text(
        "[[control.price_overrides]]\n"
        'model = "openai:gpt-4o"\n'
        'org = "acme"\n'
        "discount = 0.25\n"
        "effective_from = 2026-07-01\n"
        "effective_until = 2026-12-31\n"
    )
    pricer = Pricer.from_settings(load_settings(config))

    price = pricer.price("openai", "gpt-4o", USAGE, JULY, org="acme")

    assert price.cost_usd == listed("gpt-4o", "openai", JULY) * Decimal("0.75")
    assert price.source == f"override:openai:gpt-4o/acme@{GENAI_PRICES_SOURCE}"
    assert pricer.org_specific


# --- the pricer -------------------------------------------------------------------------


def test_a_discount_applies_from_its_first_utc_day_to_its_last_inclusive() -> None:
    pricer = Pricer(
        overrides=[
            override(model="openai:gpt-4o", discount="0.2", effective_until="2026-07-31"),
        ]
    )

    def at(when: dt.datetime) -> tuple[Decimal | None, str]:
        price = pricer.price("openai", "gpt-4o", USAGE, when)
        return price.cost_usd, price.source

    eve = dt.datetime(2026, 6, 30, 23, 59, 59, tzinfo=dt.UTC)
    last = dt.datetime(2026, 7, 31, 23, 59, 59, tzinfo=dt.UTC)
    after = dt.datetime(2026, 8, 1, tzinfo=dt.UTC)
    assert at(eve) == (listed("gpt-4o", "openai", eve), GENAI_PRICES_SOURCE)
    discounted = (listed("gpt-4o", "openai", JULY) * Decimal("0.8"), "override:openai:gpt-4o")
    assert at(JULY) == (discounted[0], f"{discounted[1]}@{GENAI_PRICES_SOURCE}")
    assert at(last)[1].startswith(OVERRIDE_SOURCE_PREFIX)
    assert at(after) == (listed("gpt-4o", "openai", after), GENAI_PRICES_SOURCE)
    # Epoch seconds (what the control plane passes) name the same UTC day.
    assert pricer.price("openai", "gpt-4o", USAGE, JULY.timestamp()).cost_usd == discounted[0]
    assert pricer.price("openai", "gpt-4o", USAGE, eve.timestamp()).source == GENAI_PRICES_SOURCE


def test_the_most_specific_override_in_force_wins() -> None:
    pricer = Pricer(
        overrides=[
            override(model="openai:*", discount="0.1"),
            override(model="openai:gpt-4o", discount="0.2"),
            override(model="openai:*", org="acme", discount="0.3"),
            override(
                model="openai:gpt-4o", org="acme", discount="0.4", effective_until="2026-07-01"
            ),
        ]
    )
    day2 = JULY + dt.timedelta(days=1)

    def source(model: str, org: str | None, when: dt.datetime = JULY) -> str:
        return pricer.price("openai", model, USAGE, when, org).source.split("@")[0]

    assert source("gpt-4o", "acme") == "override:openai:gpt-4o/acme"
    # The org's model override has ended: the org's provider-wide one is next.
    assert source("gpt-4o", "acme", day2) == "override:openai:*/acme"
    assert source("gpt-4o-mini", "acme") == "override:openai:*/acme"
    assert source("gpt-4o", "other") == "override:openai:gpt-4o"
    assert source("gpt-4o", None) == "override:openai:gpt-4o"
    assert source("gpt-4o-mini", None) == "override:openai:*"
    assert pricer.price("anthropic", "claude-sonnet-4-5", USAGE, JULY).source == (
        GENAI_PRICES_SOURCE
    )
    cost = pricer.price("openai", "gpt-4o-mini", USAGE, JULY, "acme").cost_usd
    assert cost == listed("gpt-4o-mini", "openai", JULY) * Decimal("0.7")


def test_an_override_covers_the_snapshots_and_provider_names_of_its_model() -> None:
    pricer = Pricer(
        overrides=[
            override(model="openai:gpt-4o", discount="0.5"),
            override(model="google:gemini-2.5-flash", discount="0.5"),
        ]
    )
    snapshot = pricer.price("openai", "gpt-4o-2024-08-06", USAGE, JULY)
    assert snapshot.source.startswith("override:openai:gpt-4o@")
    assert snapshot.cost_usd == listed("gpt-4o-2024-08-06", "openai", JULY) / 2
    # The OpenTelemetry name of the Gemini API and genai-prices' id are one provider.
    assert pricer.price("gcp.gemini", "gemini-2.5-flash", USAGE, JULY).source.startswith(
        "override:google:gemini-2.5-flash@"
    )
    # A different model of the same family is not covered.
    assert pricer.price("openai", "gpt-4o-mini", USAGE, JULY).source == GENAI_PRICES_SOURCE


def test_explicit_prices_replace_the_list_price_and_price_an_unknown_model() -> None:
    pricer = Pricer(
        overrides=[
            override(
                model="openai:gpt-4o",
                id="contract-7",
                input_mtok="2",
                output_mtok="8",
                cache_read_mtok="0.5",
            ),
            override(model="acme:x-1", input_mtok="1", output_mtok="3"),
        ]
    )
    price = pricer.price("openai", "gpt-4o", USAGE, JULY)
    # 10,345 uncached + 2,000 cached input tokens, 678 output tokens.
    expected = (Decimal(10_345) * 2 + Decimal(2_000) * Decimal("0.5") + Decimal(678) * 8) / (10**6)
    assert price == type(price)(expected, "override:contract-7")
    assert pricer.knows("acme", "x-1")
    assert pricer.priced_model("acme", "x-1", None) == "x-1"
    assert pricer.price("acme", "x-1", USAGE, JULY).cost_usd == (
        Decimal(12_345) * 1 + Decimal(678) * 3
    ) / (10**6)
    # Before its first day the unknown model is unpriced, never 0.
    june = JULY - dt.timedelta(days=1)
    assert pricer.price("acme", "x-1", USAGE, june).cost_usd is None


def test_a_discount_of_a_model_without_list_price_leaves_it_unpriced() -> None:
    pricer = Pricer(overrides=[override(model="acme:*", discount="0.5")])

    price = pricer.price("acme", "x-1", USAGE, JULY)

    assert price.cost_usd is None
    assert price.source == UNPRICED_SOURCE
    assert price.detail is not None
    assert "no list price known for acme:x-1" in price.detail
    assert not pricer.knows("acme", "x-1")


def test_inconsistent_usage_stays_unpriced_under_an_override() -> None:
    pricer = Pricer(overrides=[override(model="openai:gpt-4o", input_mtok="1", output_mtok="1")])
    bad = Usage(input_tokens=10, cache_read_tokens=50)
    assert pricer.price("openai", "gpt-4o", bad, JULY).cost_usd is None


def test_the_worst_case_reserves_at_the_overridden_price() -> None:
    plain = Pricer()
    pricer = Pricer(
        overrides=[
            override(model="openai:gpt-4o", discount="0.2"),
            override(model="openai:gpt-4o-mini", org="acme", input_mtok="1", output_mtok="4"),
        ]
    )
    kwargs: dict[str, Any] = {"input_tokens": 1_000, "max_output_tokens": 500, "at": JULY}
    listed_worst = plain.worst_case("openai", "gpt-4o", **kwargs)
    assert listed_worst is not None
    assert pricer.worst_case("openai", "gpt-4o", **kwargs) == listed_worst * Decimal("0.8")
    assert pricer.worst_case("openai", "gpt-4o-mini", org="acme", **kwargs) == Decimal(
        1_000 * 1 + 500 * 4
    ) / (10**6)
    assert pricer.worst_case("openai", "gpt-4o-mini", **kwargs) == plain.worst_case(
        "openai", "gpt-4o-mini", **kwargs
    )
    june = {**kwargs, "at": (JULY - dt.timedelta(seconds=1)).timestamp()}
    assert pricer.worst_case("openai", "gpt-4o", **june) == plain.worst_case(
        "openai", "gpt-4o", **june
    )


def test_price_counts_and_coefficients_agree_with_price() -> None:
    pricer = Pricer(
        overrides=[
            override(model="anthropic:claude-sonnet-4-5", discount="0.15"),
            override(model="openai:*", org="acme", input_mtok="1", output_mtok="2"),
        ]
    )
    rows = [(1_000, 50, 200, 100, 0), (300_000, 10, 0, 0, 0), (5, 3, 0, 0, 0)]
    days = [JULY - dt.timedelta(days=1), JULY, JULY + dt.timedelta(hours=30)]
    at_us = [int(day.timestamp() * 1_000_000) for day in days]
    for provider, model, org in [
        ("anthropic", "claude-sonnet-4-5", None),
        ("openai", "gpt-4o", "acme"),
        ("openai", "gpt-4o", None),
    ]:
        batch = pricer.price_counts(provider, model, rows, at_us, org=org)
        for row, day, got in zip(rows, days, batch, strict=True):
            usage = Usage(
                **dict(
                    zip(
                        (
                            "input_tokens",
                            "output_tokens",
                            "cache_read_tokens",
                            "cache_write_tokens",
                            "reasoning_tokens",
                        ),
                        row,
                        strict=True,
                    )
                )
            )
            one = pricer.price(provider, model, usage, day, org)
            assert got == one
            coefficients = pricer.coefficients(provider, model, day, org=org)
            assert coefficients is not None
            assert coefficients.source == one.source
            tier = coefficients.tier(row[0])
            inp, out, cr, cw, rs = row
            from_coefficients = (
                tier.per_request
                + tier.input * (inp - cr - cw)
                + tier.cache_read * cr
                + tier.cache_write * cw
                + tier.output * (out - rs)
                + tier.reasoning * rs
            )
            assert from_coefficients == one.cost_usd


# --- through the control plane ---------------------------------------------------------


def test_the_control_plane_charges_and_records_the_discounted_price(tmp_path: Path) -> None:
    from comptroller import semconv
    from comptroller.control import (
        BudgetSpec,
        CallDefaults,
        ControlPlane,
        GuardKey,
        MemoryGuard,
        ModelRef,
        ResolvedProfile,
        StaticProfiles,
    )
    from comptroller.control.testing import (
        FakeClock,
        FakeOpenAIServer,
        InMemorySink,
        ModelBehaviour,
    )

    config = tmp_path / "comptroller.toml"
    config.write_text(
        "[[control.price_overrides]]\n"
        'model = "openai:gpt-4o-mini"\n'
        "discount = 0.5\n"
        "effective_from = 2026-01-01\n"  # the fake clock's first day
    )
    clock, sink = FakeClock(), InMemorySink()
    guard = MemoryGuard(clock=clock)
    with FakeOpenAIServer() as server:
        server.behave(
            "gpt-4o-mini", ModelBehaviour(content="ok", prompt_tokens=4_000, completion_tokens=100)
        )
        profile = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider="openai", model="gpt-4o-mini"),
            base_url=server.base_url,
            budget=BudgetSpec(daily_usd=Decimal(1)),
            defaults=CallDefaults(max_tokens=100),
        )
        plane = ControlPlane(
            load_settings(config, telemetry="none"),
            resolver=StaticProfiles({"reasoning": profile}),
            guard=guard,
            sink=sink,
            clock=clock,
        )
        with plane:
            plane.chat_model("reasoning", domain="acme", context="chat").invoke("go")
            assert plane.flush()

    (row,) = sink.usage_rows()
    day = dt.datetime.fromtimestamp(clock.time(), dt.UTC)
    usage = Usage(input_tokens=4_000, output_tokens=100)
    expected = Pricer().price("openai", "gpt-4o-mini", usage, day).cost_usd
    assert expected is not None
    assert Decimal(row[semconv.COST_USD]) == expected / 2
    assert row[semconv.PRICE_SOURCE] == f"override:openai:gpt-4o-mini@{GENAI_PRICES_SOURCE}"
    ledger = guard.ledger(GuardKey(tenant="acme", context="chat", purpose="reasoning"))
    assert ledger.spent_usd == expected / 2


def test_an_orgs_own_price_applies_to_its_calls_and_reservations_only(tmp_path: Path) -> None:
    from comptroller import semconv
    from comptroller.control import (
        BudgetExceeded,
        BudgetSpec,
        CallDefaults,
        ControlPlane,
        MemoryGuard,
        ModelRef,
        ResolvedProfile,
        StaticProfiles,
    )
    from comptroller.control.testing import FakeClock, FakeOpenAIServer, InMemorySink

    config = tmp_path / "comptroller.toml"
    config.write_text(
        "[[control.price_overrides]]\n"
        'model = "openai:gpt-4o-mini"\n'
        'org = "acme"\n'
        "input_mtok = 1500\n"  # 10,000 × the list price: an org whose deal went wrong
        "output_mtok = 6000\n"
        "effective_from = 2026-01-01\n"
    )
    clock, sink = FakeClock(), InMemorySink()
    with FakeOpenAIServer() as server:
        profile = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider="openai", model="gpt-4o-mini"),
            base_url=server.base_url,
            budget=BudgetSpec(daily_usd=Decimal("0.5")),
            defaults=CallDefaults(max_tokens=100),
        )
        plane = ControlPlane(
            load_settings(config, telemetry="none"),
            resolver=StaticProfiles({"reasoning": profile}),
            guard=MemoryGuard(clock=clock),
            sink=sink,
            clock=clock,
        )
        with plane:
            plane.chat_model("reasoning", domain="initech-lab", org="initech").invoke("go")
            # acme's worst case at its own price ($0.6 for 100 output tokens) is over the cap.
            with pytest.raises(BudgetExceeded):
                plane.chat_model("reasoning", domain="acme-eu", org="acme").invoke("go")
            assert plane.flush()
    (row,) = sink.usage_rows()
    assert row[semconv.ORG] == "initech"
    assert row[semconv.PRICE_SOURCE] == GENAI_PRICES_SOURCE
