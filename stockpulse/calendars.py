"""Exchange calendars (``exchange_calendars``): when a market is in session.

Streams use them so that silence outside a session is not mistaken for a dead connection, and a gap that
lies wholly outside sessions is not filled (nothing traded). Schedules bound to a calendar run only on
sessions, only while open, or once after each close (``gate``). Calendars are built once per process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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


# ---------------------------------------------------------------------------------- schedule gates


@dataclass(frozen=True)
class CalendarRule:
    """How a schedule follows an exchange calendar (``beat_schedule.yaml``: calendar, when, after_close).

    - ``when: trading_days``: the schedule's own cron/interval, but only on the calendar's sessions.
    - ``when: during_session``: the schedule's interval, only while the market is open.
    - ``after_close: 30m``: once per session, that long after its close (early closes included). The entry
      is checked every ``check_every`` and runs at the first check past close + offset, up to
      ``catch_up`` later (a beat that was down still runs it once, late).
    """

    calendar: str
    when: str | None = None
    after_close_s: float | None = None
    catch_up_s: float = 6 * 3600.0

    def as_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class GateDecision:
    run: bool
    reason: str  # why it runs or is skipped, for the run row and logs
    session: str | None = None  # the session (YYYY-MM-DD) an after_close run belongs to
    record_skip: bool = True  # a skip worth a pipeline_runs row (not every idle after_close check)


def gate(rule: CalendarRule, now: datetime) -> GateDecision:
    """Whether a schedule bound to ``rule`` runs at ``now`` (UTC)."""
    import pandas as pd

    cal = calendar(rule.calendar)
    moment = pd.Timestamp(now).tz_convert("UTC")
    local_day = moment.tz_convert(cal.tz).date()
    if rule.after_close_s is not None:
        # The most recent session whose close + offset has passed.
        offset = pd.Timedelta(seconds=rule.after_close_s)
        sessions = cal.sessions_in_range(pd.Timestamp(local_day) - pd.Timedelta(days=10), pd.Timestamp(local_day))
        for session in reversed(sessions):
            due = cal.session_close(session) + offset
            if due <= moment:
                if moment - due > pd.Timedelta(seconds=rule.catch_up_s):
                    break
                return GateDecision(True, f"{rule.calendar} session {session.date()} closed at "
                                          f"{cal.session_close(session).tz_convert(cal.tz):%H:%M %Z}; "
                                          f"running {rule.after_close_s / 60:.0f} min after the close",
                                    session=str(session.date()))
        return GateDecision(False, "not yet due after a close", record_skip=False)
    if rule.when == "trading_days":
        if cal.is_session(pd.Timestamp(local_day)):
            return GateDecision(True, f"{local_day} is a {rule.calendar} session")
        return GateDecision(False, f"{local_day} is not a {rule.calendar} session (weekend or holiday)")
    if rule.when == "during_session":
        if in_session(rule.calendar, now):
            return GateDecision(True, f"{rule.calendar} is open")
        return GateDecision(False, f"{rule.calendar} is closed at {moment.tz_convert(cal.tz):%Y-%m-%d %H:%M %Z}")
    return GateDecision(True, "no calendar condition")
