"""Times as the lab reads them.

The database stores naive UTC (``store.schema.utcnow``). Pages, reports and the count log show
and filter times in the lab's time zone, ``BLOODCELLS_TIMEZONE`` (an IANA name such as
``Europe/Berlin``; UTC when unset), each with its zone's abbreviation: an analysis made at 00:30
in Berlin is counted on that day, not on the one before.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .settings import SettingsError, settings


def lab_zone() -> tzinfo:
    return _zone(settings().timezone)


@cache
def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:  # OSError: a folder of zones, e.g. "Europe"
        raise SettingsError(f"BLOODCELLS_TIMEZONE={name}: not a time zone (give an IANA name such as "
                         "Europe/Berlin)") from error


def lab_time(moment: datetime) -> datetime:
    """A stored time (naive UTC, or aware) in the lab's zone."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(lab_zone())


def stamp(moment: datetime) -> str:
    """``2026-03-02 00:30 CET``: to the minute, in the lab's zone, with its abbreviation."""
    return f"{lab_time(moment):%Y-%m-%d %H:%M %Z}"


def lab_days(first: date | None, last: date | None) -> tuple[datetime | None, datetime | None]:
    """The stored (naive UTC) times from the start of the lab's day ``first`` to before the start of
    the day after ``last``: the lab's dates as a query on stored times (None: open on that side)."""
    def start_of(day: date) -> datetime:
        return datetime.combine(day, time.min, lab_zone()).astimezone(UTC).replace(tzinfo=None)

    for day in (first, last):  # the day after 9999-12-31, or 0001-01-01 east of UTC, is no datetime
        if day is not None and not date(1, 1, 2) <= day <= date(9999, 12, 30):
            raise ValueError(f"{day}: give a date between 0001-01-02 and 9999-12-30")
    return (None if first is None else start_of(first)), (None if last is None else start_of(last + timedelta(days=1)))
