"""``beat_schedule.yaml``: schedule name -> pipeline, cron or interval, timezone.

Beat seeds RedBeat from it at start-up (RedBeat stores the entries in Redis, where they can be edited at
runtime without a redeploy).
"""

from __future__ import annotations

import re
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

    pipeline = fields.String(required=True)
    cron = fields.String()
    every = fields.String()
    timezone = fields.String(validate=_timezone)
    enabled = fields.Boolean(load_default=True)
    symbols = fields.List(fields.String())
    options = fields.Dict(keys=fields.String())

    @validates_schema
    def _one_of(self, data: dict, **_: Any) -> None:
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


def load_beat_schedule(path: Path | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Celery ``beat_schedule`` entries for the enabled schedules in the file."""
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
        if entry["pipeline"] not in settings.pipelines:
            raise ConfigError(f"{path}: schedules.{name}.pipeline: unknown pipeline {entry['pipeline']!r}")
        tz = entry.get("timezone") or data.get("timezone") or settings.timezone
        if tz != settings.timezone:
            # Celery evaluates crontabs in the app's timezone and RedBeat stores no per-entry zone.
            raise ConfigError(f"{path}: schedules.{name}.timezone: {tz!r} differs from the configured "
                              f"timezone {settings.timezone!r}; per-schedule timezones are not supported yet")
        if not entry["enabled"]:
            continue
        schedule = parse_cron(entry["cron"]) if "cron" in entry else parse_duration(entry["every"])
        kwargs: dict[str, Any] = {"pipeline": entry["pipeline"], "trigger": "schedule"}
        if entry.get("symbols"):
            kwargs["symbols"] = entry["symbols"]
        entries[name] = {"task": RUN_TASK, "schedule": schedule, "kwargs": kwargs,
                         "options": {"queue": settings.pipelines[entry["pipeline"]].queue}}
    return entries
