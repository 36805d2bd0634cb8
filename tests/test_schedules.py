"""Schedules edited live in RedBeat: precedence over the file, the CLI, and real beat processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from stockpulse.celery_app import app
from stockpulse.schedule import RUN_TASK
from stockpulse.schedules import Schedules, seed
from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stockpulse.cli", *args], cwd=ROOT, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def redbeat(redis_client: Any) -> Any:
    def wipe() -> None:
        for pattern in ("stockpulse:redbeat*", "stockpulse:schedules:*", "stockpulse:schedule:*"):
            for key in redis_client.scan_iter(pattern):
                redis_client.delete(key)

    wipe()
    yield redis_client
    wipe()


def file_entry(hours: float, *, enabled: bool = True) -> dict[str, Any]:
    return {"task": RUN_TASK, "schedule": timedelta(hours=hours), "enabled": enabled,
            "kwargs": {"pipeline": "crypto_daily_bars", "trigger": "schedule"}, "options": {"queue": "historical"}}


def test_runtime_edits_win_until_the_file_changes_and_reset_reapplies_the_file(redbeat: Any) -> None:
    store = Schedules(app)
    assert seed(app, {"bars": file_entry(1)}) == {"bars": "from file"}
    assert (store.show("bars").schedule, store.show("bars").origin) == ("every 1h", "file")

    store.set("bars", every="2h")
    assert (store.show("bars").schedule, store.show("bars").origin) == ("every 2h", "file, edited")
    # Beat restarts with the same file: the runtime edit stays.
    assert seed(app, {"bars": file_entry(1)}) == {"bars": "kept (edited at runtime)"}
    assert store.show("bars").schedule == "every 2h"
    # The file's entry changes: the file wins.
    assert seed(app, {"bars": file_entry(3)})["bars"].startswith("from file")
    assert (store.show("bars").schedule, store.show("bars").origin) == ("every 3h", "file")

    store.pause("bars")
    assert seed(app, {"bars": file_entry(3)})["bars"] == "kept (edited at runtime)"
    assert store.show("bars").enabled is False
    assert seed(app, {"bars": file_entry(3)}, reset=True)["bars"].startswith("from file")  # schedule reset
    assert store.show("bars").enabled is True

    store.delete("bars")
    assert store.deleted() == ["bars"]
    seed(app, {"bars": file_entry(3)})
    assert [i.name for i in store.list()] == []  # still deleted: the file did not change
    seed(app, {"bars": file_entry(4)})
    assert store.show("bars").schedule == "every 4h"

    store.set("extra", cron="0 7 * * 1-5", pipeline="crypto_daily_bars")
    assert store.show("extra").origin == "runtime"
    seed(app, {"bars": file_entry(4)})
    assert store.show("extra").schedule == "cron 0 7 * * 1-5"  # the file never touches runtime entries
    # Disabled in the file: seeded paused, so `resume` can turn it on.
    seed(app, {"bars": file_entry(4), "off": file_entry(1, enabled=False)})
    assert store.show("off").enabled is False and store.resume("off").enabled is True
    # Removed from the file: removed from RedBeat.
    assert seed(app, {"off": file_entry(1, enabled=False)})["bars"] == "removed (no longer in the file)"
    assert {i.name for i in store.list()} == {"extra", "off"}


@pytest.mark.parametrize(("args", "message"), [
    (("set", "x", "--cron", "61 * * * *"), "invalid cron expression '61 * * * *'"),
    (("set", "x", "--every", "5 minutes"), "invalid duration '5 minutes'"),
    (("set", "x", "--every", "5m", "--pipeline", "nope"), "unknown pipeline 'nope'"),
    (("set", "x", "--every", "5m", "--timezone", "Mars/Olympus"), "unknown timezone 'Mars/Olympus'"),
    (("set", "x", "--every", "5m", "--timezone", "Europe/London"), "per-schedule timezones are not supported"),
    (("set", "x", "--every", "5m"), "no schedule 'x': give --pipeline to create one"),
    (("set", "x", "--every", "5m", "--cron", "* * * * *"), "exactly one of --cron or --every"),
    (("pause", "x"), "unknown schedule 'x'"),
    (("run-now", "x"), "unknown schedule 'x'"),
])
def test_invalid_edits_are_refused_with_a_clear_message(redbeat: Any, args: tuple[str, ...], message: str) -> None:
    result = cli("schedule", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def scheduled_runs() -> int:
    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import pipeline_runs

    with get_engine().connect() as conn:
        return conn.execute(select(func.count()).select_from(pipeline_runs).where(
            pipeline_runs.c.pipeline == "crypto_daily_bars", pipeline_runs.c.trigger == "schedule")).scalar()


def start_beat(schedule_file: Path, name: str, tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, STOCKPULSE_BEAT_SCHEDULE_PATH=str(schedule_file))
    with open(tmp_path / f"beat-{name}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "stockpulse", "beat", "-l", "INFO",
                                 "--max-interval", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def wait_for(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_a_running_beat_follows_cli_edits_without_a_restart(clean_stack: Stack, redbeat: Any,
                                                             tmp_path: Path) -> None:
    schedule_file = tmp_path / "beat_schedule.yaml"
    schedule_file.write_text(yaml.safe_dump({"schedules": {
        "crypto": {"pipeline": "crypto_daily_bars", "every": "1h", "symbols": ["BTC-USD"]}}}))
    beat = start_beat(schedule_file, "edits", tmp_path)
    try:
        time.sleep(4)
        assert scheduled_runs() == 0  # hourly: not due yet
        edited = cli("schedule", "set", "crypto", "--every", "2s")
        assert edited.returncode == 0, edited.stderr
        assert "every 2s" in edited.stdout and "file, edited" in edited.stdout
        wait_for(lambda: scheduled_runs() >= 4, "runs every 2 s after the edit", timeout=20)

        assert cli("schedule", "pause", "crypto").returncode == 0
        time.sleep(1.5)  # a run already sent may still be recorded
        paused_at = scheduled_runs()
        time.sleep(5)
        assert scheduled_runs() == paused_at

        assert cli("schedule", "resume", "crypto").returncode == 0
        wait_for(lambda: scheduled_runs() >= paused_at + 2, "runs after resume", timeout=20)

        listing = cli("schedule", "list")
        assert listing.returncode == 0 and "crypto_daily_bars" in listing.stdout and "active" in listing.stdout

        assert cli("schedule", "delete", "crypto").returncode == 0
        time.sleep(1.5)
        deleted_at = scheduled_runs()
        time.sleep(4)
        assert scheduled_runs() == deleted_at
        assert beat.poll() is None  # all of it without restarting beat
    finally:
        stop(beat)


def test_run_now_sends_one_manual_run(clean_stack: Stack, redbeat: Any) -> None:
    before = Schedules(app).set("crypto", every="1d", pipeline="crypto_daily_bars")
    result = cli("schedule", "run-now", "crypto")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent crypto: task ")
    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import pipeline_runs

    def runs() -> list[Any]:
        with get_engine().connect() as conn:
            return conn.execute(select(pipeline_runs).where(pipeline_runs.c.pipeline == "crypto_daily_bars")).all()

    wait_for(lambda: any(r.status == "succeeded" for r in runs()), "the run", timeout=60)
    [run] = runs()
    assert run.trigger == "manual"  # run-now is not a scheduled run
    after = Schedules(app).show("crypto")
    assert after.last_run_at == before.last_run_at  # the schedule is as it was


def test_two_beats_do_not_double_schedule(clean_stack: Stack, redbeat: Any, tmp_path: Path) -> None:
    schedule_file = tmp_path / "beat_schedule.yaml"
    schedule_file.write_text(yaml.safe_dump({"schedules": {
        "crypto": {"pipeline": "crypto_daily_bars", "every": "2s", "symbols": ["BTC-USD"]}}}))
    first = start_beat(schedule_file, "first", tmp_path)
    second = None
    try:
        wait_for(lambda: scheduled_runs() >= 1, "the first beat scheduling")
        second = start_beat(schedule_file, "second", tmp_path)  # started by mistake
        time.sleep(3)
        began, started = scheduled_runs(), time.monotonic()
        time.sleep(10)
        per_2s = (scheduled_runs() - began) / ((time.monotonic() - started) / 2)
        assert per_2s <= 1.3, f"{per_2s:.2f} runs per 2 s: both beats are scheduling"
        assert second.poll() is None  # it waits for RedBeat's lock instead of scheduling
        stop(first)  # the waiting beat takes over once the lock is free (lock timeout)
    finally:
        stop(first)
        if second is not None:
            stop(second)


# ------------------------------------------------------------------------------------- calendars


def test_calendar_bound_schedules_in_the_file(tmp_path: Path) -> None:
    from stockpulse.errors import ConfigError
    from stockpulse.schedule import load_beat_schedule

    path = tmp_path / "beat_schedule.yaml"
    path.write_text(yaml.safe_dump({"schedules": {
        "after": {"pipeline": "daily_bars", "calendar": "XNYS", "after_close": "30m"},
        "days": {"pipeline": "daily_bars", "calendar": "XNYS", "when": "trading_days", "cron": "30 18 * * *"}}}))
    entries = load_beat_schedule(path)
    assert entries["after"]["schedule"] == timedelta(minutes=5)  # checked every check_every
    assert entries["after"]["kwargs"]["calendar_rule"] == {"calendar": "XNYS", "after_close_s": 1800.0,
                                                           "catch_up_s": 21600.0}
    assert entries["days"]["kwargs"]["calendar_rule"]["when"] == "trading_days"
    for bad, message in (({"calendar": "NOPE", "when": "trading_days", "every": "1h"}, "unknown exchange calendar"),
                         ({"when": "trading_days", "every": "1h"}, "need a 'calendar'"),
                         ({"calendar": "XNYS", "after_close": "30m", "every": "5m"}, "drop 'cron'/'every'")):
        path.write_text(yaml.safe_dump({"schedules": {"x": {"pipeline": "daily_bars", **bad}}}))
        with pytest.raises(ConfigError, match=message):
            load_beat_schedule(path)


def test_a_holiday_is_recorded_as_skipped_and_an_early_close_runs_once(clean_stack: Stack, redbeat: Any) -> None:
    from stockpulse.pipeline.runs import get_run

    def fire(rule: dict[str, Any], as_of: str) -> str | None:  # what beat sends, at a travelled clock
        return app.send_task("stockpulse.pipeline.run", kwargs={
            "pipeline": "crypto_daily_bars", "trigger": "schedule", "calendar_rule": rule,
            "schedule_name": "cal", "as_of": as_of}, queue="historical").get(timeout=30)

    skipped = get_run(fire({"calendar": "XNYS", "when": "trading_days"}, "2026-11-26T23:30:00+00:00"))
    assert (skipped.status, skipped.trigger) == ("skipped", "schedule")
    assert skipped.error_message == "2026-11-26 is not a XNYS session (weekend or holiday)"

    after_close = {"calendar": "XNYS", "after_close_s": 1800}
    fired = [fire(after_close, f"2026-11-27T18:{minute}:00+00:00") for minute in (25, 31, 36)]
    assert fired[0] is None and fired[2] is None  # before close + 30 min; then already run for the session
    run = clean_stack.wait(fired[1])
    assert run.status == "succeeded" and run.trigger == "schedule"
