"""Exact USD amounts as text and as integers, for the log, reports and exports.

Amounts are `Decimal` everywhere. The log keeps each one as exact decimal text; SQL sums
need integers, so a cost is also split into whole dollars and the pico-dollars (1e-12)
left over, neither of which can overflow a 64-bit integer for any cost we can price.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

PICO = 10**12
INT64 = 2**63
CENT = Decimal("0.01")
# Significant digits shown for amounts under a cent: enough to tell $0.0026 from $0.0096.
SMALL_DIGITS = 3


def money_text(amount: Decimal | None) -> str | None:
    """Exact plain-decimal text without exponent or trailing zeros ('0.0035')."""
    if amount is None:
        return None
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def to_pico(amount: Decimal | None) -> int | None:
    """The amount in whole pico-dollars, when it fits SQLite's 64-bit integers.

    Past that (over $9.2 million for one call) it is None: the exact text, split by the
    log's `calls_costed` view, still counts it.
    """
    if amount is None:
        return None
    pico = int((amount * PICO).to_integral_value())
    return pico if -INT64 <= pico < INT64 else None


def from_parts(whole: int | None, micro: int | None = 0, pico: int | None = 0) -> Decimal:
    """Whole dollars + millionths + pico-dollars (the log's sums) as one exact Decimal.

    Built from text, never by Decimal arithmetic, which would round past 28 digits.
    """
    total = (whole or 0) * PICO + (micro or 0) * 10**6 + (pico or 0)
    return Decimal(money_text(Decimal(f"{total}E-12")) or "0")


def format_usd(amount: Decimal | None) -> str:
    """An amount as people read it in tables and messages: whole cents from $0.01 up
    ('$22.83', '$1,204.50'), three significant digits below ('$0.0096', '$0.000325'),
    '—' for no amount. Rounded half up, so it is for display only: JSON and CSV carry
    the exact `money_text`.

    >>> format_usd(Decimal("22.83495855")), format_usd(Decimal("0.00123456"))
    ('$22.83', '$0.00123')
    """
    if amount is None:
        return "—"
    if amount < 0:
        return "-" + format_usd(-amount)
    if amount >= CENT:
        return f"${amount.quantize(CENT, rounding=ROUND_HALF_UP):,}"
    if amount == 0:
        return "$0.00"
    # The exponent of the last significant digit kept, e.g. -4 for 0.0096 at 2 digits.
    last = amount.adjusted() - SMALL_DIGITS + 1
    shown = amount.quantize(Decimal(1).scaleb(last), rounding=ROUND_HALF_UP)
    if shown >= CENT:
        return f"${shown.quantize(CENT):,}"
    return f"${money_text(shown)}"
