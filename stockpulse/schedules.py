"""Schedules at runtime: the RedBeat entries in Redis, their precedence over ``beat_schedule.yaml``, and the
edits behind ``stockpulse schedule``.

Precedence: beat seeds RedBeat from the file when it starts. An entry edited at runtime (set, pause,
resume, delete) keeps its runtime state across beat restarts **until the file's own entry for it
changes**; then the file wins again. ``stockpulse schedule reset [NAME...]`` re-applies the file at once.
Entries created at runtime (``set NAME --pipeline P ...``) are never touched by the file. Beat reads
entries from Redis on every tick, so an edit takes effect within one tick, without a restart.

Two hashes beside RedBeat's keys hold the bookkeeping: ``stockpulse:schedules:file`` (each file entry's
definition as last seeded) and ``stockpulse:schedules:edited`` (name -> edited | deleted | created).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab, schedule

from stockpulse.config import get_settings
from stockpulse.errors import ConfigError

log = logging.getLogger("stockpulse.beat")
FILE_KEY = "stockpulse:schedules:file"
EDITED_KEY = "stockpulse:schedules:edited"


def _redis(app: Any) -> Any:
    from redbeat.schedulers import ensure_conf, get_redis

    ensure_conf(app)
    return get_redis(app)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def definition_of(entry: dict[str, Any]) -> str:
    """A file entry's definition in one comparable string."""
    from stockpulse.schedule import _describe

    return f"{_describe(entry)}|enabled={entry.get('enabled', True)}|options={sorted((entry.get('options') or {}).items())}"


def _write(app: Any, name: str, entry: dict[str, Any]) -> None:
    from redbeat.schedulers import RedBeatSchedulerEntry

    new = RedBeatSchedulerEntry(name=name, task=entry["task"], schedule=entry["schedule"],
                                args=entry.get("args") or (), kwargs=entry.get("kwargs") or {},
                                options=entry.get("options") or {}, enabled=entry.get("enabled", True), app=app)
    try:  # keep when it last ran: a redefinition must not make it due at once
        new.last_run_at = RedBeatSchedulerEntry.from_key(new.key, app=app).last_run_at
    except KeyError:
        pass
    new.save()


def seed(app: Any, file_entries: dict[str, dict[str, Any]], *, reset: bool = False,
         names: list[str] | None = None) -> dict[str, str]:
    """Apply ``beat_schedule.yaml`` (as loaded) to RedBeat under the precedence rules; returns what happened
    to each entry. ``reset`` lets the file win over runtime edits; ``names`` limits the reset."""
    from redbeat.schedulers import RedBeatSchedulerEntry

    client = _redis(app)
    seeded = {_text(k): _text(v) for k, v in client.hgetall(FILE_KEY).items()}
    edited = {_text(k): _text(v) for k, v in client.hgetall(EDITED_KEY).items()}
    outcome: dict[str, str] = {}
    for name, entry in file_entries.items():
        if names and name not in names:
            continue
        definition = definition_of(entry)
        if name in edited and seeded.get(name) == definition and not reset:
            outcome[name] = f"kept ({edited[name]} at runtime)"
        else:
            if name in edited and edited[name] == "created" and not reset:
                outcome[name] = "kept (created at runtime)"
                continue
            _write(app, name, entry)
            client.hdel(EDITED_KEY, name)
            outcome[name] = "from file" if name not in edited else f"from file (replaced a runtime {edited[name]})"
        client.hset(FILE_KEY, name, definition)
    for name in set(seeded) - set(file_entries):
        if names and name not in names:
            continue
        # Removed from the file: the file changed for it, so the file wins.
        RedBeatSchedulerEntry(name=name, app=app).delete()
        client.hdel(FILE_KEY, name)
        client.hdel(EDITED_KEY, name)
        outcome[name] = "removed (no longer in the file)"
    for name, what in sorted(outcome.items()):
        if what.startswith("kept") or "replaced" in what:
            log.info("beat: schedule %s: %s", name, what, extra={"schedule": name})
    return outcome


# ------------------------------------------------------------------------------------------- edits


@dataclass
class ScheduleInfo:
    name: str
    target: str  # the pipeline, or the maintenance task
    schedule: str
    enabled: bool
    origin: str  # file | file, edited | runtime
    last_run_at: datetime | None
    next_run_at: datetime | None
    kwargs: dict[str, Any]
    celery_schedule: Any = field(default=None, repr=False, compare=False)  # crontab or schedule

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "schedule": self.schedule, "enabled": self.enabled,
                "origin": self.origin, "kwargs": self.kwargs,
                "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
                "next_run_at": self.next_run_at.isoformat() if self.next_run_at else None}


def describe_schedule(value: Any) -> str:
    if isinstance(value, crontab):
        return "cron " + " ".join(str(getattr(value, f"_orig_{part}")) for part in
                                  ("minute", "hour", "day_of_month", "month_of_year", "day_of_week"))
    if isinstance(value, schedule):
        seconds = value.run_every.total_seconds()
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size and seconds % size == 0:
                return f"every {int(seconds // size)}{unit}"
        return f"every {seconds:g}s"
    return repr(value)


class Schedules:
    """The RedBeat entries of this deployment (the Celery app's Redis)."""

    def __init__(self, app: Any | None = None):
        if app is None:
            from stockpulse.celery_app import app as celery_app

            app = celery_app
        self.app = app
        self.client = _redis(app)

    def _entry(self, name: str) -> Any:
        from redbeat.schedulers import RedBeatSchedulerEntry

        try:
            return RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(self.app, name), app=self.app)
        except KeyError:
            known = ", ".join(i.name for i in self.list()) or "none"
            raise ConfigError(f"unknown schedule {name!r} (scheduled: {known})") from None

    def _info(self, entry: Any) -> ScheduleInfo:
        edited = self.client.hget(EDITED_KEY, entry.name)
        in_file = self.client.hexists(FILE_KEY, entry.name)
        origin = "runtime" if not in_file else ("file, edited" if edited else "file")
        kwargs = dict(entry.kwargs or {})
        try:
            next_run = entry.due_at if entry.enabled else None
        except Exception:
            next_run = None
        when = describe_schedule(entry.schedule)
        rule = kwargs.get("calendar_rule")
        if rule:
            when = (f"{rule['after_close_s'] / 60:g} min after each {rule['calendar']} close (checked {when})"
                    if rule.get("after_close_s") is not None else f"{when}, {rule['calendar']} {rule.get('when')}")
        return ScheduleInfo(entry.name, kwargs.get("pipeline") or entry.task, when, bool(entry.enabled), origin,
                            entry.last_run_at, next_run, kwargs, entry.schedule)

    def list(self) -> list[ScheduleInfo]:
        from redbeat.schedulers import RedBeatSchedulerEntry

        out = []
        for key in self.client.zrange(self.app.redbeat_conf.schedule_key, 0, -1):
            try:
                out.append(self._info(RedBeatSchedulerEntry.from_key(_text(key), app=self.app)))
            except KeyError:
                continue
        return sorted(out, key=lambda i: i.name)

    def deleted(self) -> list[str]:
        """File entries deleted at runtime (they come back when the file's entry changes, or on reset)."""
        return sorted(_text(k) for k, v in self.client.hgetall(EDITED_KEY).items() if _text(v) == "deleted")

    def show(self, name: str) -> ScheduleInfo:
        return self._info(self._entry(name))

    def set(self, name: str, *, cron: str | None = None, every: str | None = None, timezone: str | None = None,
            pipeline: str | None = None) -> ScheduleInfo:
        from stockpulse.schedule import RUN_TASK, parse_cron, parse_duration

        if (cron is None) == (every is None):
            raise ConfigError("give exactly one of --cron or --every")
        try:
            new_schedule = parse_cron(cron) if cron is not None else schedule(parse_duration(every or ""))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        settings = get_settings()
        if timezone is not None:
            check_timezone(timezone, settings.timezone)
        if pipeline is not None and pipeline not in settings.pipelines:
            raise ConfigError(f"unknown pipeline {pipeline!r} (configured: {', '.join(sorted(settings.pipelines))})")
        exists = self.client.exists(self._key(name))
        if not exists:
            if pipeline is None:
                raise ConfigError(f"no schedule {name!r}: give --pipeline to create one")
            entry = {"task": RUN_TASK, "schedule": new_schedule,
                     "kwargs": {"pipeline": pipeline, "trigger": "schedule"},
                     "options": {"queue": settings.pipelines[pipeline].queue}}
            _write(self.app, name, entry)
            self._mark(name, "created")
            return self.show(name)
        current = self._entry(name)
        if pipeline is not None and (current.kwargs or {}).get("pipeline") != pipeline:
            raise ConfigError(f"schedule {name!r} runs {current.kwargs.get('pipeline') or current.task}; "
                              "delete it and create a new one to change what it runs")
        current.schedule = new_schedule
        current.save()
        current.reschedule(current.last_run_at or datetime.now(UTC))  # recompute when it is next due
        self._mark(name, "edited")
        return self.show(name)

    def pause(self, name: str) -> ScheduleInfo:
        entry = self._entry(name)
        entry.enabled = False
        entry.save()
        self._mark(name, "edited")
        return self.show(name)

    def resume(self, name: str) -> ScheduleInfo:
        """Enable again from now on: slots missed while paused are not run (``run-now`` runs one)."""
        entry = self._entry(name)
        entry.enabled = True
        entry.save()
        entry.reschedule(datetime.now(UTC))
        self._mark(name, "edited")
        return self.show(name)

    def delete(self, name: str) -> None:
        entry = self._entry(name)
        entry.delete()
        if self.client.hexists(FILE_KEY, name):
            self._mark(name, "deleted")
        else:
            self.client.hdel(EDITED_KEY, name)

    def run_now(self, name: str) -> str:
        """Send the entry's task now, once (a pipeline run with trigger ``manual``); returns the task id."""
        entry = self._entry(name)
        kwargs = dict(entry.kwargs or {})
        if "pipeline" in kwargs:
            kwargs["trigger"] = "manual"
        return self.app.send_task(entry.task, args=entry.args, kwargs=kwargs, **(entry.options or {})).id

    def reset(self, names: list[str] | None = None) -> dict[str, str]:
        from stockpulse.schedule import load_beat_schedule

        return seed(self.app, load_beat_schedule(include_disabled=True), reset=True, names=names or None)

    def _key(self, name: str) -> str:
        from redbeat.schedulers import RedBeatSchedulerEntry

        return RedBeatSchedulerEntry.generate_key(self.app, name)

    def _mark(self, name: str, what: str) -> None:
        self.client.hset(EDITED_KEY, name, what)


def check_timezone(timezone: str, configured: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone {timezone!r} (use an IANA name such as America/New_York)") from None
    if timezone != configured:
        # Celery evaluates crontabs in the app's timezone and RedBeat stores no per-entry zone.
        raise ConfigError(f"timezone {timezone!r} differs from the configured timezone {configured!r}; "
                          "per-schedule timezones are not supported")


def age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    delta = datetime.now(UTC) - moment.astimezone(UTC)
    future = delta < timedelta(0)
    seconds = abs(delta.total_seconds())
    text = f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"
    return f"in {text}" if future else f"{text} ago"
