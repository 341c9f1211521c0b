"""Money in the control plane's error messages goes through the one formatter."""

from __future__ import annotations

import pickle
from decimal import Decimal

from comptroller.control import BudgetExceeded, GuardKey


def test_budget_exceeded_shows_sub_cent_amounts_at_one_precision_never_as_zero() -> None:
    err = BudgetExceeded(
        GuardKey("initech-lab", "platform", "scoring"),
        Decimal("0.0002"),
        Decimal("0.0000342"),
        Decimal("0"),
        requested=Decimal("0.00018"),
        day="2026-12-05",
    )
    assert (
        "cap $0.0002000, spent $0.0000342, reserved in flight $0.0000000, this call needs "
        "$0.0001800 (worst case) but only $0.0001658 is left"
    ) in str(err)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_budget_exceeded_writes_dollar_amounts_with_cents_and_separators() -> None:
    err = BudgetExceeded(
        GuardKey("acme", "support", "reasoning"),
        Decimal("1500"),
        Decimal("1499.5"),
        Decimal("0.25"),
        requested=Decimal("0.6"),
    )
    assert (
        "cap $1,500.00, spent $1,499.50, reserved in flight $0.25, this call needs $0.60 "
        "(worst case) but only $0.25 is left"
    ) in str(err)
