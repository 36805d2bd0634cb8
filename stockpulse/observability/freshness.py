"""When data is late, by the pipeline's exchange calendar rather than by a fixed age.

A daily bar for a session is expected by that session's close plus ``settle_hours`` (early closes and
holidays included), so Friday's bar is not "stale" all weekend and no bar is expected on Thanksgiving. Ticks
(and intraday bars) are expected only while the market is in session, within ``freshness_lag_s`` of now;
outside sessions nothing is due. News and fundamentals follow no calendar: only their age is exported.

The exporter turns this into ``stockpulse_data_expected``, ``stockpulse_data_overdue_seconds`` and
``stockpulse_data_stale_symbols`` per pipeline, and ``stockpulse status`` shows it (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from stockpulse.config import PipelineSettings

ALWAYS_OPEN = ("always", "none")
DEFAULT_STREAM_LAG_S = 300.0


@dataclass(frozen=True)
class Freshness:
    expected: bool  # the calendar expects new data by now
    overdue_s: float  # how long the expected data has been due (0: on time or nothing due; inf: none ever)
    stale_symbols: int  # symbols behind the expectation (daily bars; 0 otherwise)
    rule: str  # what is expected, in words

    @property
    def late(self) -> bool:
        return self.overdue_s > 0


def calendar_of(pipe: PipelineSettings) -> str:
    """The pipeline's calendar: ``options.calendar``, else its stream's or provider's default."""
    from stockpulse.pipeline.gaps import pipeline_calendar
    from stockpulse.providers import PROVIDERS

    if pipe.data_type == "trades" and "calendar" not in pipe.options:
        stream = PROVIDERS[pipe.provider].streams.get("trades")
        return (stream.calendar if stream else None) or "none"
    return pipeline_calendar(pipe)


def daily_expectation(pipe: PipelineSettings, now: datetime) -> tuple[date, datetime]:
    """The session whose daily bar must exist by ``now``, and the moment it became due."""
    from stockpulse.pipeline.gaps import last_settled_session

    name, settle = calendar_of(pipe), float(pipe.options.get("settle_hours", 2))
    if name in ALWAYS_OPEN:
        session = (now - timedelta(hours=24 + settle)).date()
        return session, datetime.combine(session, datetime.min.time(), UTC) + timedelta(hours=24 + settle)
    from stockpulse.calendars import calendar

    session = last_settled_session(name, now, settle)
    close = calendar(name).session_close(session.isoformat()).to_pydatetime()
    return session, close + timedelta(hours=settle)


def assess(pipe: PipelineSettings, newest_by_symbol: dict[str, datetime], now: datetime) -> Freshness:
    """``newest_by_symbol``: each symbol's newest loaded record time (the watermarks)."""
    if pipe.data_type == "bars" and pipe.interval == "1d":
        session, due = daily_expectation(pipe, now)
        wanted = datetime.combine(session, datetime.min.time(), UTC)  # daily bars are stamped 00:00 UTC
        stale = [s for s in pipe.symbols if newest_by_symbol.get(s) is None or newest_by_symbol[s] < wanted]
        rule = f"the {session} daily bar, due {due:%Y-%m-%d %H:%M} UTC"
        return Freshness(True, max(0.0, (now - due).total_seconds()) if stale else 0.0, len(stale), rule)
    if pipe.data_type == "trades" or pipe.data_type == "bars":
        return _intraday(pipe, max(newest_by_symbol.values(), default=None), now)
    return Freshness(False, 0.0, 0, "no calendar expectation (age only)")


def _intraday(pipe: PipelineSettings, newest: datetime | None, now: datetime) -> Freshness:
    """Ticks or intraday bars: during a session the newest record is at most ``freshness_lag_s`` old
    (plus one bar interval); a session that opened after the newest record counts from its open."""
    lag = timedelta(seconds=float(pipe.options.get("freshness_lag_s", DEFAULT_STREAM_LAG_S)))
    if pipe.data_type == "bars":
        lag += timedelta(minutes={"1m": 1, "5m": 5, "15m": 15, "1h": 60}.get(pipe.interval, 0))
    name = calendar_of(pipe)
    opened: datetime | None = None
    if name not in ALWAYS_OPEN:
        import pandas as pd

        from stockpulse.calendars import calendar, in_session

        if not in_session(name, now):
            return Freshness(False, 0.0, 0, f"{name} closed: nothing due")
        cal = calendar(name)
        minute = pd.Timestamp(now).floor("min")
        if cal.first_minute <= minute <= cal.last_minute:
            opened = cal.session_open(cal.minute_to_session(minute)).to_pydatetime()
    rule = f"a record within {lag.total_seconds():.0f} s" + (f" ({name} in session)" if opened else "")
    if newest is None:
        return Freshness(True, float("inf"), 0, rule + "; none loaded yet")
    due = max(newest, opened or newest) + lag
    return Freshness(True, max(0.0, (now - due).total_seconds()), 0, rule)
