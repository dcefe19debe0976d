"""Jinja filters: money, quantities and dates formatted with Babel."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, format_percent
from flask import Flask

from portal.money import Money

LOCALE = "en_US"


def money(value: Money | None) -> str:
    return "—" if value is None else value.format(LOCALE)


def minor(value: int | None, currency: str) -> str:
    return "—" if value is None else Money.from_minor(value, currency).format(LOCALE)


def unit_price(value: Decimal | None, currency: str) -> str:
    """A price per unit: at least the currency's 2 decimals, more only when needed
    (a token can cost $0.000002)."""
    if value is None:
        return "—"
    return format_currency(value, currency, format="¤#,##0.00########", locale=LOCALE,
                           currency_digits=False)


def quantity(value: Decimal | int | None, digits: int = 2) -> str:
    if value is None:
        return "Unlimited"
    return format_decimal(value, format=f"#,##0.{'#' * digits}" if digits else "#,##0",
                          locale=LOCALE)


def percentage(value: Decimal | None) -> str:
    return "—" if value is None else format_percent(value / 100, "#,##0.0%", locale=LOCALE)


def local_datetime(value: dt.datetime | None, timezone: str = "UTC") -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return format_datetime(value.astimezone(ZoneInfo(timezone)), "yyyy-MM-dd HH:mm zzz",
                           locale=LOCALE)


def long_date(value: dt.date | None) -> str:
    return "—" if value is None else format_date(value, "medium", locale=LOCALE)


def init_filters(app: Flask) -> None:
    filters: dict[str, Callable[..., str]] = {
        "money": money, "minor": minor, "quantity": quantity, "percentage": percentage,
        "local_datetime": local_datetime, "long_date": long_date, "unit_price": unit_price}
    for name, func in filters.items():
        app.add_template_filter(func, name)
