"""`money`: one display format for amounts (issue #25 item 7), and exact text for data."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modelforge.money import format_usd, from_parts, money_text


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        # From a cent up: whole cents, rounded half up, thousands grouped.
        ("22.83495855", "$22.83"),
        ("22.8", "$22.80"),
        ("0.01", "$0.01"),
        ("0.015", "$0.02"),
        ("0.0172", "$0.02"),
        ("1234567.891", "$1,234,567.89"),
        ("1E+3", "$1,000.00"),
        # Below a cent: three significant digits, no trailing zeros.
        ("0.0096", "$0.0096"),
        ("0.005", "$0.005"),
        ("0.000325", "$0.000325"),
        ("0.00123456", "$0.00123"),
        ("0.00999", "$0.00999"),
        ("0.009996", "$0.01"),  # rounds up to a cent, then shows as cents
        ("0.0000000001", "$0.0000000001"),
        ("0", "$0.00"),
        ("-0.5", "-$0.50"),
        ("-0.0026", "-$0.0026"),
    ],
)
def test_format_usd(amount: str, shown: str) -> None:
    assert format_usd(Decimal(amount)) == shown


def test_no_amount_is_a_dash_and_data_stays_exact() -> None:
    assert format_usd(None) == "—"
    assert money_text(Decimal("22.83495855")) == "22.83495855"
    # 22 dollars + 834,958 millionths + 550,000 pico-dollars
    assert from_parts(22, 834958, 550000) == Decimal("22.83495855")
