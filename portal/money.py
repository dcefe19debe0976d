"""Money: an exact amount in one currency. No float ever enters or leaves.

Amounts are ``Decimal``. Stored and API amounts are integer minor units (cents);
``to_minor`` is the one place an amount is rounded, with ``ROUNDING`` (half up).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

from babel.numbers import format_currency, get_currency_precision

ROUNDING = ROUND_HALF_UP


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined."""


@lru_cache(maxsize=64)
def minor_digits(currency: str) -> int:
    """Digits after the decimal point in ``currency`` (2 for USD, 0 for JPY)."""
    return get_currency_precision(currency)


def to_decimal(value: Decimal | int | str) -> Decimal:
    """A Decimal from an int, a Decimal or a decimal string; refuses floats."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError("money and quantities are never floats; pass a Decimal, int or str")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


def round_minor(amount: Decimal, currency: str) -> int:
    """``amount`` (major units) rounded once, half up, to integer minor units."""
    digits = minor_digits(currency)
    return int((amount * (Decimal(10) ** digits)).quantize(Decimal(1), rounding=ROUNDING))


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal  # major units, unrounded
    currency: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", to_decimal(self.amount))
        if len(self.currency) != 3:
            raise ValueError(f"not an ISO 4217 code: {self.currency!r}")

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), currency)

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        """Money from integer minor units (as stored and as the API speaks)."""
        if not isinstance(minor, int) or isinstance(minor, bool):
            raise TypeError("minor units are integers")
        return cls(Decimal(minor).scaleb(-minor_digits(currency)), currency)

    def to_minor(self) -> int:
        """Integer minor units, rounded half up."""
        return round_minor(self.amount, self.currency)

    def rounded(self) -> Money:
        return Money.from_minor(self.to_minor(), self.currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __mul__(self, factor: Decimal | int) -> Money:
        return Money(self.amount * to_decimal(factor), self.currency)

    __rmul__ = __mul__

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def format(self, locale: str = "en_US") -> str:
        """Rounded to the currency's minor unit and formatted for ``locale``."""
        return format_currency(self.rounded().amount, self.currency, locale=locale)

    def __str__(self) -> str:
        return self.format()


def format_minor(minor: int, currency: str, locale: str = "en_US") -> str:
    return Money.from_minor(minor, currency).format(locale)
