"""Property tests (hypothesis) for money and for the exact splits rating relies on."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoices.rating import allocate
from portal.money import Money, round_minor

amounts = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=6,
                      allow_nan=False, allow_infinity=False)
currencies = st.sampled_from(["USD", "EUR", "JPY", "GBP"])


@given(st.integers(min_value=-10**15, max_value=10**15), currencies)
def test_minor_units_round_trip(minor, currency):
    assert Money.from_minor(minor, currency).to_minor() == minor


@given(amounts)
def test_rounding_is_half_up_to_the_cent(amount):
    expected = int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert round_minor(amount, "USD") == expected
    assert abs(Decimal(expected) / 100 - amount) <= Decimal("0.005")


@given(amounts, amounts)
def test_sums_are_exact(a, b):
    assert (Money(a, "USD") + Money(b, "USD")).amount == a + b


@given(amounts)
def test_floats_are_refused(amount):
    with pytest.raises(TypeError):
        Money(float(amount), "USD")


def test_currencies_do_not_mix():
    with pytest.raises(ValueError):
        Money(Decimal(1), "USD") + Money(Decimal(1), "EUR")


weights = st.dictionaries(st.text(min_size=1, max_size=8), st.integers(min_value=0,
                                                                        max_value=10**12),
                          min_size=1, max_size=30)


@given(st.integers(min_value=0, max_value=10**12), weights)
def test_allocation_is_exact_and_proportional(total, shares):
    result = allocate(total, shares)
    assert set(result) == set(shares)
    if sum(shares.values()) == 0:
        assert all(v == 0 for v in result.values())
        return
    assert sum(result.values()) == total
    whole = sum(shares.values())
    for key, weight in shares.items():
        exact = Decimal(total) * weight / whole
        assert abs(Decimal(result[key]) - exact) < 1  # off by less than one unit
        if weight == 0:
            assert result[key] == 0
