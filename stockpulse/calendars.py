"""Exchange calendars (``exchange_calendars``): when a market is in session.

Streams use them so that silence outside a session is not mistaken for a dead connection, and a gap that
lies wholly outside sessions is not filled (nothing traded). Calendars are built once per process.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from stockpulse.errors import ConfigError


@lru_cache(maxsize=16)
def calendar(name: str) -> Any:
    import exchange_calendars

    try:
        return exchange_calendars.get_calendar(name)
    except exchange_calendars.errors.InvalidCalendarName:
        raise ConfigError(f"unknown exchange calendar {name!r} (e.g. XNYS, XNAS, XLON)") from None


def in_session(name: str, at: datetime) -> bool:
    """Whether the market trades at ``at`` (early closes and holidays included)."""
    import pandas as pd

    cal = calendar(name)
    moment = pd.Timestamp(at).floor("min")
    if not cal.first_minute <= moment <= cal.last_minute:
        return True  # outside what the calendar knows: assume trading rather than hide a dead stream
    return bool(cal.is_trading_minute(moment))


def traded_between(name: str, start: datetime, end: datetime) -> bool:
    """Whether any trading minute lies in [start, end]."""
    import pandas as pd

    cal = calendar(name)
    first, last = pd.Timestamp(start).floor("min"), pd.Timestamp(end).ceil("min")
    if last < cal.first_minute or first > cal.last_minute:
        return True
    first, last = max(first, cal.first_minute), min(last, cal.last_minute)
    return len(cal.minutes_in_range(first, last)) > 0
