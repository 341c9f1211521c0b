"""The one money formatter: no non-zero amount reads as zero, a column shares one precision."""

from __future__ import annotations

import doctest
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

import comptroller.money
from comptroller.money import usd, usd_column

amounts = st.decimals(
    min_value=Decimal("-1e9"), max_value=Decimal("1e9"), allow_nan=False, allow_infinity=False
)


def _digits(text: str) -> str:
    return re.sub(r"[^0-9]", "", text)


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(comptroller.money).failed == 0


@given(amounts)
def test_a_non_zero_amount_never_reads_as_zero(amount: Decimal) -> None:
    text = usd(amount)
    if amount != 0:
        assert _digits(text).strip("0"), f"{amount} was written {text}"


@given(amounts, st.integers(min_value=0, max_value=9))
def test_a_fixed_precision_that_cannot_show_the_amount_says_less_than(
    amount: Decimal, decimals: int
) -> None:
    text = usd(amount, decimals=decimals)
    if amount != 0:
        assert _digits(text).strip("0") or text.startswith(("<", ">"))


@given(st.lists(amounts, min_size=1, max_size=8))
def test_a_column_shares_one_precision_and_hides_no_amount(values: list[Decimal]) -> None:
    texts = usd_column(values)
    widths = {
        len(t.split(".")[1]) for t in texts if "." in t and not t.lstrip("-").startswith(("<", ">"))
    }
    assert len(widths) <= 1, texts
    for value, text in zip(values, texts, strict=True):
        if value != 0:
            assert _digits(text).strip("0") or text.startswith(("<", ">"))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0"), "$0.00"),
        (Decimal("0.5"), "$0.50"),
        (Decimal("0.0002"), "$0.0002"),
        (Decimal("0.000234"), "$0.000234"),
        (Decimal("1234567.891"), "$1,234,567.89"),
        (Decimal("-0.0002"), "-$0.0002"),
        (Decimal("1e-12"), "<$0.000000001"),
        (0.1 + 0.2, "$0.30"),
        (None, "—"),
    ],
)
def test_amounts_read_as_people_expect(value: object, text: str) -> None:
    assert usd(value) == text


def test_a_change_shows_its_sign_and_before_after_share_precision() -> None:
    assert usd(Decimal("0.0132"), sign=True) == "+$0.0132"
    assert usd_column([Decimal("0.0132"), Decimal("0.0141")]) == ["$0.0132", "$0.0141"]
    assert usd_column([Decimal("0.00002"), Decimal("0.0002")]) == ["$0.00002", "$0.00020"]
