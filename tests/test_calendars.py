from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stockpulse.calendars import in_session, traded_between
from stockpulse.errors import ConfigError


def test_sessions_holidays_and_early_closes() -> None:
    assert in_session("XNYS", datetime(2026, 12, 2, 17, 0, tzinfo=UTC))  # Wednesday 12:00 New York
    assert not in_session("XNYS", datetime(2026, 12, 2, 21, 30, tzinfo=UTC))  # after the 16:00 close
    assert not in_session("XNYS", datetime(2026, 11, 26, 17, 0, tzinfo=UTC))  # Thanksgiving
    assert in_session("XNYS", datetime(2026, 11, 27, 17, 30, tzinfo=UTC))  # the day after: open...
    assert not in_session("XNYS", datetime(2026, 11, 27, 18, 30, tzinfo=UTC))  # ...until the 13:00 early close
    assert not in_session("XNYS", datetime(2026, 11, 28, 15, 0, tzinfo=UTC))  # Saturday


def test_traded_between() -> None:
    assert not traded_between("XNYS", datetime(2026, 12, 2, 22, 0, tzinfo=UTC), datetime(2026, 12, 3, 14, 0, tzinfo=UTC))
    assert traded_between("XNYS", datetime(2026, 12, 2, 20, 50, tzinfo=UTC), datetime(2026, 12, 2, 22, 0, tzinfo=UTC))


def test_an_unknown_calendar_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown exchange calendar 'NOPE'"):
        in_session("NOPE", datetime(2026, 12, 2, tzinfo=UTC))


def test_schedule_gates() -> None:
    from stockpulse.calendars import CalendarRule, gate

    days = CalendarRule("XNYS", when="trading_days")
    thanksgiving = gate(days, datetime(2026, 11, 26, 23, 30, tzinfo=UTC))
    assert not thanksgiving.run and thanksgiving.record_skip
    assert thanksgiving.reason == "2026-11-26 is not a XNYS session (weekend or holiday)"
    assert gate(days, datetime(2026, 11, 27, 23, 30, tzinfo=UTC)).run  # 18:30 New York, still the 27th

    open_only = CalendarRule("XNYS", when="during_session")
    assert gate(open_only, datetime(2026, 11, 27, 17, 0, tzinfo=UTC)).run
    assert not gate(open_only, datetime(2026, 11, 27, 18, 30, tzinfo=UTC)).run  # after the early close

    after = CalendarRule("XNYS", after_close_s=1800, catch_up_s=3600)
    assert not gate(after, datetime(2026, 11, 27, 18, 29, tzinfo=UTC)).run  # early close 13:00 + 30 min
    early = gate(after, datetime(2026, 11, 27, 18, 31, tzinfo=UTC))
    assert early.run and early.session == "2026-11-27" and "closed at 13:00" in early.reason
    assert gate(after, datetime(2026, 11, 27, 19, 29, tzinfo=UTC)).run  # a late beat still runs it...
    assert not gate(after, datetime(2026, 11, 27, 19, 31, tzinfo=UTC)).run  # ...until catch_up has passed
    normal = gate(after, datetime(2026, 11, 25, 21, 31, tzinfo=UTC))
    assert normal.session == "2026-11-25" and "closed at 16:00" in normal.reason
    idle = gate(after, datetime(2026, 11, 26, 22, 0, tzinfo=UTC))  # Thanksgiving: no close to follow
    assert not idle.run and not idle.record_skip
