"""How money is written for people: one formatter for the TUI, the CLI, CI reports and the demo.

Two promises hold everywhere an amount is shown:

- a non-zero amount is never written as zero (``$0.00`` for $0.0003 tells an operator that a
  call was free when it was not): amounts under a dollar keep ``SIGNIFICANT`` significant
  digits, down to the ledger's precision of a nano-dollar, and anything smaller but non-zero
  is written ``<$0.000000001``;
- amounts that are read against each other (one column, "spent X of Y", "before -> after")
  share one precision: :func:`usd_column` picks the decimals the smallest non-zero amount needs
  and writes every amount with them.

Large amounts get thousands separators. ``None`` means *unpriced* (the price is unknown, not
zero) and is written as ``none`` (a dash by default), never as ``$0.00``.

>>> usd(Decimal("1234.5"))
'$1,234.50'
>>> usd(Decimal("0.000234"))
'$0.000234'
>>> usd_column([Decimal("0.00003"), Decimal("0.0002")])
['$0.00003', '$0.00020']
>>> usd(Decimal("0.0132"), sign=True)
'+$0.0132'
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

__all__ = ["DASH", "SIGNIFICANT", "decimals_for", "usd", "usd_column"]

DASH = "—"
SIGNIFICANT = 3
"""Significant digits kept for amounts under a dollar."""
_MIN_DECIMALS = 2
_MAX_DECIMALS = 9  # the ledger counts nano-dollars; nothing finer is real
_SMALLEST = Decimal(1).scaleb(-_MAX_DECIMALS)


def _decimal(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not an amount of money: {value!r}") from None


def decimals_for(value: object) -> int:
    """Decimals that show ``value`` with its significant digits (2 for a dollar or more)."""
    amount = _decimal(value)
    if amount is None or not amount.is_finite() or amount == 0:
        return _MIN_DECIMALS
    magnitude = abs(amount)
    if magnitude >= 1:
        return _MIN_DECIMALS
    # adjusted() is the exponent of the leading digit: 0.000234 -> -4, so 4 - 1 + 3 = 6 decimals.
    wanted = -magnitude.adjusted() - 1 + SIGNIFICANT
    # ...but no trailing zeros beyond what the amount has: 0.5 is $0.50, not $0.500.
    wanted = min(_MAX_DECIMALS, wanted)
    kept = magnitude.quantize(Decimal(1).scaleb(-wanted), rounding=ROUND_HALF_EVEN)
    exponent = kept.normalize().as_tuple().exponent  # an int: the amount is finite
    return max(_MIN_DECIMALS, min(wanted, -int(exponent)))


def usd(value: object, *, decimals: int | None = None, sign: bool = False, none: str = DASH) -> str:
    """Write one amount of US dollars.

    ``decimals`` fixes the precision (as :func:`usd_column` does for a column); without it the
    amount's own significant digits decide. ``sign=True`` writes ``+`` before a positive amount
    (for changes). ``None`` (unpriced) is written as ``none``.
    """
    amount = _decimal(value)
    if amount is None:
        return none
    if not amount.is_finite():
        return f"{amount}"
    places = decimals_for(amount) if decimals is None else max(0, min(decimals, _MAX_DECIMALS))
    negative = amount < 0
    magnitude = abs(amount)
    rounded = magnitude.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    if rounded == 0 and magnitude != 0:
        # Too small for the precision asked: say so rather than print a zero.
        floor = Decimal(1).scaleb(-places) if magnitude >= _SMALLEST else _SMALLEST
        return f">-${floor:f}" if negative else f"<${floor:f}"
    text = f"${rounded:,.{places}f}"
    if negative and rounded != 0:
        return "-" + text
    if sign and rounded != 0:
        return "+" + text
    return text


def usd_column(values: Iterable[object], *, sign: bool = False, none: str = DASH) -> list[str]:
    """Write amounts that are read together with one shared precision.

    The precision is what the smallest non-zero amount needs, so none of them reads as zero
    and they line up:

    >>> usd_column([Decimal("12.5"), Decimal("0.004")])
    ['$12.500', '$0.004']
    """
    amounts = [_decimal(v) for v in values]
    places = max(
        (decimals_for(a) for a in amounts if a is not None and a.is_finite() and a != 0),
        default=_MIN_DECIMALS,
    )
    return [usd(a, decimals=places, sign=sign, none=none) for a in amounts]
