"""The newest schedule fire a pipeline owes a success for, by its cron, interval or calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.schedules import crontab, schedule

from stockpulse.schedule_due import last_due
from tests.conftest import Stack

NY = "America/New_York"
GRACE = timedelta(minutes=30)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def due(celery_schedule: Any, now: str, **rule: Any) -> datetime | None:
    return last_due(celery_schedule, {"calendar_rule": rule} if rule else {}, utc(now), GRACE, NY)


def test_interval_and_cron() -> None:
    assert due(schedule(timedelta(minutes=15)), "2026-11-30T12:00") == utc("2026-11-30T11:15")
    weekdays_1830 = crontab(minute="30", hour="18", day_of_week="1-5")
    # Monday 07:00 New York: Friday's 18:30 (23:30 UTC) is the newest fire.
    assert due(weekdays_1830, "2026-11-30T12:00") == utc("2026-11-27T23:30")
    # Its run has until 19:00 New York to succeed: at 18:45 the previous weekday's fire is the one owed.
    assert due(weekdays_1830, "2026-12-01T23:45") == utc("2026-11-30T23:30")
    assert due(weekdays_1830, "2026-12-02T00:01") == utc("2026-12-01T23:30")
    assert due(crontab(minute="0", hour="6", day_of_month="1"), "2026-11-30T12:00") == utc("2026-11-01T11:00")


def test_calendar_bound_schedules_skip_holidays_and_follow_early_closes() -> None:
    # Thanksgiving (Thursday 26th) is no session: a trading-days 09:00 cron last fired on Wednesday.
    assert due(crontab(minute="0", hour="9"), "2026-11-27T12:00", calendar="XNYS",
               when="trading_days") == utc("2026-11-25T14:00")
    # Friday 27th closed at 13:00 New York (18:00 UTC): its after-close run (150 min) was due 20:30 UTC.
    after_close = {"calendar": "XNYS", "after_close_s": 9000}
    assert due(schedule(timedelta(minutes=5)), "2026-11-27T21:00", **after_close) == utc("2026-11-27T20:30")
    assert due(schedule(timedelta(minutes=5)), "2026-11-27T20:59", **after_close) == utc("2026-11-25T23:30")
    # Saturday: a during-session interval last fired one interval before Friday's close.
    assert due(schedule(timedelta(minutes=5)), "2026-11-28T15:00", calendar="XNYS",
               when="during_session") == utc("2026-11-27T17:55")
    assert due(schedule(timedelta(minutes=5)), "2026-11-30T16:00", calendar="XNYS",
               when="during_session") == utc("2026-11-30T15:25")


@pytest.mark.integration
def test_exporter_pairs_each_pipeline_due_time_with_its_last_success(clean_stack: Stack, redis_client: Any) -> None:
    from stockpulse.celery_app import app
    from stockpulse.observability.exporter import StatusCollector
    from stockpulse.schedules import seed

    for key in redis_client.scan_iter("stockpulse:redbeat*"):
        redis_client.delete(key)
    seed(app, {"bars-hourly": {"task": "stockpulse.pipeline.run", "schedule": timedelta(hours=1), "enabled": True,
                               "kwargs": {"pipeline": "crypto_daily_bars", "trigger": "schedule"},
                               "options": {"queue": "historical"}}})
    try:
        def samples() -> dict[tuple[str, str | None], float]:
            return {(s.name, s.labels.get("pipeline")): s.value for family in StatusCollector(0).collect()
                    for s in family.samples}

        before = samples()
        owed = before[("stockpulse_schedule_last_due_timestamp_seconds", "crypto_daily_bars")]
        now = datetime.now(UTC).timestamp()
        assert now - 5400 - 5 <= owed <= now - 5400 + 5  # an hour's interval plus the 30-minute grace
        assert before[("stockpulse_pipeline_last_success_timestamp_seconds", "crypto_daily_bars")] == 0
        assert ("stockpulse_schedule_last_due_timestamp_seconds", "daily_bars") not in before  # not scheduled
        run = clean_stack.run("crypto_daily_bars", symbols=["BTC-USD"], start=datetime.now(UTC).date() - timedelta(days=3))
        assert run.status == "succeeded"
        after = samples()
        assert after[("stockpulse_pipeline_last_success_timestamp_seconds", "crypto_daily_bars")] > owed
    finally:
        for key in list(redis_client.scan_iter("stockpulse:redbeat*")) + list(redis_client.scan_iter("stockpulse:schedules:*")):
            redis_client.delete(key)
