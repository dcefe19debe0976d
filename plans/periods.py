"""Billing periods: monthly from a billing-cycle anchor day, in the tenant's time zone."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

MAX_ANCHOR_DAY = 28  # every month has it, so periods never drift


@dataclass(frozen=True)
class Period:
    start: dt.date  # first day, inclusive
    end: dt.date  # first day of the next period, exclusive

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def last_day(self) -> dt.date:
        return self.end - dt.timedelta(days=1)

    @property
    def label(self) -> str:
        """``YYYY-MM`` of the month the period starts in (the API's ``period``)."""
        return f"{self.start.year:04d}-{self.start.month:02d}"

    def contains(self, day: dt.date) -> bool:
        return self.start <= day < self.end

    def next(self) -> Period:
        return period_containing(self.end, self.start.day)

    def previous(self) -> Period:
        return period_containing(self.start - dt.timedelta(days=1), self.start.day)

    def utc_bounds(self, timezone: str) -> tuple[dt.datetime, dt.datetime]:
        """The period as a half-open UTC interval (its days are in ``timezone``)."""
        zone = ZoneInfo(timezone)
        start = dt.datetime.combine(self.start, dt.time(), zone).astimezone(dt.UTC)
        end = dt.datetime.combine(self.end, dt.time(), zone).astimezone(dt.UTC)
        return start, end


def _month_add(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def period_containing(day: dt.date, anchor_day: int = 1) -> Period:
    """The billing period that contains ``day`` for a cycle anchored on ``anchor_day``."""
    if not 1 <= anchor_day <= MAX_ANCHOR_DAY:
        raise ValueError(f"the anchor day is 1-{MAX_ANCHOR_DAY}")
    year, month = day.year, day.month
    if day.day < anchor_day:
        year, month = _month_add(year, month, -1)
    start = dt.date(year, month, anchor_day)
    end_year, end_month = _month_add(year, month, 1)
    return Period(start, dt.date(end_year, end_month, anchor_day))


def period_from_label(label: str, anchor_day: int = 1) -> Period:
    """The period that starts in month ``YYYY-MM``; ValueError when malformed."""
    try:
        year_s, month_s = label.split("-")
        start = dt.date(int(year_s), int(month_s), anchor_day)
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"period must be YYYY-MM, not {label!r}") from exc
    if len(year_s) != 4 or len(month_s) != 2:
        raise ValueError(f"period must be YYYY-MM, not {label!r}")
    return period_containing(start, anchor_day)


def local_day(moment: dt.datetime, timezone: str) -> dt.date:
    """The calendar day of an aware ``moment`` in ``timezone``."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return moment.astimezone(ZoneInfo(timezone)).date()


def today_in(timezone: str, now: dt.datetime | None = None) -> dt.date:
    return local_day(now or dt.datetime.now(dt.UTC), timezone)


def local_range(first: dt.date | None, last: dt.date | None,
                timezone: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Days ``first`` to ``last`` (both inclusive, in ``timezone``) as a half-open UTC
    interval; either end may be open."""
    zone = ZoneInfo(timezone)
    start = (dt.datetime.combine(first, dt.time(), zone).astimezone(dt.UTC)
             if first else None)
    end = (dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
           if last else None)
    return start, end
