"""``beat_schedule.yaml``: schedule name -> pipeline, cron or interval, timezone.

Beat seeds RedBeat from it at start-up (RedBeat stores the entries in Redis, where they can be edited at
runtime without a redeploy).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from celery.schedules import crontab
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from stockpulse.config import Settings, _timezone, get_settings
from stockpulse.errors import ConfigError

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RUN_TASK = "stockpulse.pipeline.run"


def parse_duration(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h, 1d")
    return timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])


def parse_cron(expr: str) -> crontab:
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"invalid cron expression {expr!r}: expected 5 fields (minute hour day month weekday)")
    minute, hour, day_of_month, month_of_year, day_of_week = parts
    try:
        schedule = crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                           month_of_year=month_of_year, day_of_week=day_of_week)
        # crontab parses lazily in places; touching the sets validates every field now.
        _ = (schedule.minute, schedule.hour, schedule.day_of_week, schedule.day_of_month, schedule.month_of_year)
    except Exception as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from None
    return schedule


class ScheduleEntrySchema(Schema):
    class Meta:
        unknown = RAISE

    pipeline = fields.String()
    task = fields.String(validate=validate.Regexp(r"^stockpulse\.maintenance\.[a-z_]+$",
                                                  error="only stockpulse.maintenance.* tasks can be scheduled"))
    kwargs = fields.Dict(keys=fields.String())
    cron = fields.String()
    every = fields.String()
    timezone = fields.String(validate=_timezone)
    enabled = fields.Boolean(load_default=True)
    symbols = fields.List(fields.String())
    options = fields.Dict(keys=fields.String())
    # Exchange calendar binding (stockpulse.calendars.CalendarRule).
    calendar = fields.String()
    when = fields.String(validate=validate.OneOf(["trading_days", "during_session"]))
    after_close = fields.String()
    check_every = fields.String(load_default="5m")
    catch_up = fields.String(load_default="6h")

    @validates_schema
    def _one_of(self, data: dict, **_: Any) -> None:
        if ("pipeline" in data) == ("task" in data):
            raise ValidationError("give exactly one of 'pipeline' or 'task'")
        if ("when" in data or "after_close" in data) and "calendar" not in data:
            raise ValidationError("'when' and 'after_close' need a 'calendar' (e.g. XNYS)")
        if "calendar" in data:
            from stockpulse.calendars import calendar

            if "task" in data:
                raise ValidationError("calendars apply to pipeline schedules")
            if ("when" in data) == ("after_close" in data):
                raise ValidationError("with a 'calendar', give exactly one of 'when' or 'after_close'")
            try:
                calendar(data["calendar"])
                for key in ("after_close", "check_every", "catch_up"):
                    if key in data:
                        parse_duration(data[key])
            except (ConfigError, ValueError) as exc:
                raise ValidationError(str(exc)) from None
            if "after_close" in data:
                if "cron" in data or "every" in data:
                    raise ValidationError("'after_close' sets when it runs: drop 'cron'/'every' (the entry is "
                                          "checked every 'check_every', 5m by default)")
                return
        if ("cron" in data) == ("every" in data):
            raise ValidationError("give exactly one of 'cron' or 'every'")
        try:
            if "cron" in data:
                parse_cron(data["cron"])
            else:
                parse_duration(data["every"])
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class BeatFileSchema(Schema):
    class Meta:
        unknown = RAISE

    timezone = fields.String(validate=_timezone)
    schedules = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z][a-z0-9_-]*$")),
                            values=fields.Nested(ScheduleEntrySchema), load_default=dict)


def load_beat_schedule(path: Path | None = None, settings: Settings | None = None, *,
                       include_disabled: bool = True) -> dict[str, Any]:
    """RedBeat ``beat_schedule`` entries for the schedules in the file; a disabled one is seeded paused
    (``enabled: False``), so ``stockpulse schedule resume`` can turn it on."""
    settings = settings or get_settings()
    path = path or Path(settings.beat_schedule_path)
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data = BeatFileSchema().load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid schedule file: {exc.messages}") from None
    entries: dict[str, Any] = {}
    for name, entry in data["schedules"].items():
        if not entry["enabled"] and not include_disabled:
            continue
        if "task" in entry:
            entries[name] = {"task": entry["task"], "kwargs": entry.get("kwargs") or {},
                             "schedule": parse_cron(entry["cron"]) if "cron" in entry else parse_duration(entry["every"]),
                             "options": {"queue": "maintenance"}, "enabled": entry["enabled"]}
            continue
        if entry["pipeline"] not in settings.pipelines:
            raise ConfigError(f"{path}: schedules.{name}.pipeline: unknown pipeline {entry['pipeline']!r}")
        tz = entry.get("timezone") or data.get("timezone") or settings.timezone
        if tz != settings.timezone:
            # Celery evaluates crontabs in the app's timezone and RedBeat stores no per-entry zone.
            raise ConfigError(f"{path}: schedules.{name}.timezone: {tz!r} differs from the configured "
                              f"timezone {settings.timezone!r}; per-schedule timezones are not supported yet")
        kwargs: dict[str, Any] = {"pipeline": entry["pipeline"], "trigger": "schedule"}
        if entry.get("symbols"):
            kwargs["symbols"] = entry["symbols"]
        if "after_close" in entry:
            schedule = parse_duration(entry["check_every"])
        else:
            schedule = parse_cron(entry["cron"]) if "cron" in entry else parse_duration(entry["every"])
        if "calendar" in entry:
            from stockpulse.calendars import CalendarRule

            rule = CalendarRule(entry["calendar"], when=entry.get("when"),
                                after_close_s=parse_duration(entry["after_close"]).total_seconds()
                                if "after_close" in entry else None,
                                catch_up_s=parse_duration(entry["catch_up"]).total_seconds())
            kwargs["calendar_rule"] = rule.as_kwargs()
            kwargs["schedule_name"] = name
        entries[name] = {"task": RUN_TASK, "schedule": schedule, "kwargs": kwargs,
                         "options": {"queue": settings.pipelines[entry["pipeline"]].queue},
                         "enabled": entry["enabled"]}
    return entries


def _make_scheduler() -> type:
    import redis
    from redbeat.schedulers import RedBeatScheduler, get_redis

    log = logging.getLogger("stockpulse.beat")

    class Scheduler(RedBeatScheduler):
        """RedBeat that survives Redis losing everything: it keeps scheduling through a Redis outage, and
        when it finds its entries gone (Redis restarted empty) it restores them from beat_schedule.yaml and
        logs which runtime edits were lost, without a restart. Its lock is re-taken if Redis dropped it."""

        check_interval_s = 10.0

        def __init__(self, *args: Any, **kwargs: Any):
            self._last_check = 0.0
            self._known: dict[str, str] = {}
            super().__init__(*args, **kwargs)

        def setup_schedule(self) -> None:
            """Seed from beat_schedule.yaml under the precedence rules of ``stockpulse.schedules``."""
            from stockpulse.schedules import seed

            static = self.app.redbeat_conf.schedule
            self.install_default_entries(static)
            seed(self.app, static)
            if static:
                get_redis(self.app).sadd(self.app.redbeat_conf.statics_key, *static.keys())

        def tick(self, *args: Any, **kwargs: Any) -> float:
            try:
                self._heal()
                return super().tick(*args, **kwargs)
            except redis.exceptions.LockError:
                return self._retake_lock()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("beat: Redis unavailable (%s); retrying in 5s", exc)
                return 5.0

        def _retake_lock(self) -> float:
            lock = self.lock
            if lock is None:
                return 5.0
            if lock.acquire(blocking=False):
                log.warning("beat: the lock was lost with Redis; taken again")
                return 0.0
            log.warning("beat: another beat holds the lock now; waiting")
            return float(self.max_interval)

        def _heal(self) -> None:
            now = time.monotonic()
            if now - self._last_check < self.check_interval_s:
                return
            self._last_check = now
            client = get_redis(self.app)
            static = self.app.redbeat_conf.schedule
            if static and not client.exists(self.app.redbeat_conf.statics_key):
                lost = sorted(name for name, definition in self._known.items()
                              if name not in static or definition != _describe(static[name]))
                log.error("beat: schedules missing from Redis (restarted empty?); restoring %d from %s%s",
                          len(static), get_settings().beat_schedule_path,
                          f"; runtime edits lost: {', '.join(lost)}" if lost else "")
                self.setup_schedule()
            self._known = {}
            for key in client.zrange(self.app.redbeat_conf.schedule_key, 0, -1):
                name = key.decode().rsplit(":", 1)[-1] if isinstance(key, bytes) else str(key).rsplit(":", 1)[-1]
                try:
                    entry = self.Entry.from_key(key.decode() if isinstance(key, bytes) else key, app=self.app)
                except KeyError:
                    continue
                self._known[name] = _describe({"task": entry.task, "schedule": entry.schedule,
                                               "kwargs": entry.kwargs})

    return Scheduler


def _describe(entry: dict[str, Any]) -> str:
    """An entry's definition in one comparable string (a timedelta and the schedule made of it compare equal)."""
    from celery.schedules import maybe_schedule

    return f"{entry.get('task')}|{maybe_schedule(entry.get('schedule'))!r}|{sorted((entry.get('kwargs') or {}).items())}"


SelfHealingRedBeatScheduler = _make_scheduler()
