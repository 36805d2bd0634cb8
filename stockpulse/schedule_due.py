"""When a scheduled pipeline should last have succeeded, derived from its schedule (and calendar).

For each enabled pipeline schedule, :func:`last_due` is the newest moment the schedule fired that is at
least ``grace`` old: a run fired then has had ``grace`` to succeed. A pipeline whose newest success is older
than that has missed a run. Crons are evaluated in the configured timezone; calendar-bound entries count
only the fires their calendar allows (an after-close entry is due at close + offset of each session, a
``trading_days`` cron only on sessions, a ``during_session`` interval only while open), so a weekend or a
holiday never reads as a missed run. The exporter exports the result as
``stockpulse_schedule_last_due_timestamp_seconds`` beside each pipeline's last success.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule

CRON_LOOKBACK_DAYS = 400  # a yearly cron still has a previous fire


def last_due(celery_schedule: Any, kwargs: dict[str, Any], now: datetime, grace: timedelta,
             timezone: str) -> datetime | None:
    """The newest fire time ≤ now - grace (UTC), or None when the schedule never fired in the lookback."""
    cutoff = now - grace
    rule = kwargs.get("calendar_rule") or {}
    if rule.get("after_close_s") is not None:
        return _last_close(rule["calendar"], cutoff, timedelta(seconds=rule["after_close_s"]))
    sessions_only = rule.get("when") == "trading_days"
    if isinstance(celery_schedule, crontab):
        return _last_cron_fire(celery_schedule, cutoff, ZoneInfo(timezone),
                               rule["calendar"] if sessions_only else None)
    if isinstance(celery_schedule, schedule):
        every = celery_schedule.run_every
        if rule.get("when") == "during_session" or sessions_only:
            return _last_in_session(rule["calendar"], cutoff, every, whole_day=sessions_only)
        return cutoff - every
    return None


def _last_cron_fire(cron: crontab, cutoff: datetime, tz: ZoneInfo, calendar_name: str | None) -> datetime | None:
    local = cutoff.astimezone(tz)
    for back in range(CRON_LOOKBACK_DAYS):
        day = local.date() - timedelta(days=back)
        # Celery numbers weekdays from Sunday = 0.
        if day.month not in cron.month_of_year or day.day not in cron.day_of_month \
                or (day.isoweekday() % 7) not in cron.day_of_week:
            continue
        if calendar_name and not _is_session(calendar_name, day):
            continue
        for hour in sorted(cron.hour, reverse=True):
            for minute in sorted(cron.minute, reverse=True):
                moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
                if moment <= local:
                    return moment.astimezone(cutoff.tzinfo)
    return None


def _is_session(calendar_name: str, day: date) -> bool:
    from stockpulse.calendars import calendar

    cal = calendar(calendar_name)
    return bool(cal.is_session(day.isoformat())) if cal.first_session.date() <= day <= cal.last_session.date() \
        else day.weekday() < 5


def _last_close(calendar_name: str, cutoff: datetime, offset: timedelta) -> datetime | None:
    import pandas as pd

    from stockpulse.calendars import calendar

    cal = calendar(calendar_name)
    moment = pd.Timestamp(cutoff).tz_convert("UTC")
    day = moment.tz_convert(cal.tz).normalize().tz_localize(None)
    for session in reversed(cal.sessions_in_range(day - pd.Timedelta(days=14), day)):
        due = cal.session_close(session) + pd.Timedelta(offset)
        if due <= moment:
            return due.to_pydatetime()
    return None


def _last_in_session(calendar_name: str, cutoff: datetime, every: timedelta, *, whole_day: bool) -> datetime | None:
    """An interval that runs only on sessions (``whole_day``) or only while open: the newest fire is one
    interval before the cutoff if that lies in a session, else one interval before the last one ended."""
    import pandas as pd

    from stockpulse.calendars import calendar, in_session

    cal = calendar(calendar_name)
    local_day = pd.Timestamp(cutoff).tz_convert(cal.tz).date()
    if whole_day:
        if _is_session(calendar_name, local_day):
            return cutoff - every
        for back in range(1, 15):
            day = local_day - timedelta(days=back)
            if _is_session(calendar_name, day):
                end = datetime.combine(day + timedelta(days=1), datetime.min.time(), ZoneInfo(str(cal.tz)))
                return end.astimezone(cutoff.tzinfo) - every
        return None
    if in_session(calendar_name, cutoff):
        return cutoff - every
    moment = pd.Timestamp(cutoff).tz_convert("UTC")
    day = moment.tz_convert(cal.tz).normalize().tz_localize(None)
    for session in reversed(cal.sessions_in_range(day - pd.Timedelta(days=14), day)):
        close = cal.session_close(session)
        if close <= moment:
            return close.to_pydatetime() - every
    return None
