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
