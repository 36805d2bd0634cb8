"""Redis stopped for 15 s in the middle of a run and restarted empty.

Proves: workers and beat reconnect by themselves; the running beat notices its schedules are gone and
restores them from the schedule file within a minute, logging the runtime edit that was lost; a run in
flight either completes after the restart or, its messages lost with Redis, is dead-lettered by the
stale-run sweeper and completed by a replay. The test reports which happened and asserts the exact rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from stockpulse.db.engine import get_engine
from stockpulse.db.models import bars, pipeline_runs
from stockpulse.standalone import PrivateRedis, free_port
from tests.conftest import ROOT, Stack, weekdays

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def run_python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def runs_of(pipeline: str) -> list:
    with get_engine().connect() as conn:
        return conn.execute(select(pipeline_runs).where(pipeline_runs.c.pipeline == pipeline)
                            .order_by(pipeline_runs.c.created_at)).all()


def wait_for(predicate, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(message)


def test_redis_restarted_empty_mid_run(clean_stack: Stack, sim, tmp_path: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    server = PrivateRedis(redis_dir, port=port).start(persist=False)
    schedule = tmp_path / "beat_schedule.yaml"
    schedule.write_text(yaml.safe_dump({"timezone": "America/New_York", "schedules": {
        "crypto-every-3s": {"pipeline": "crypto_daily_bars", "every": "3s", "symbols": ["BTC-USD"]}}}))
    env = dict(os.environ, STOCKPULSE_REDIS_URL=server.url, STOCKPULSE_BEAT_SCHEDULE_PATH=str(schedule))
    worker = clean_stack.restart_worker(STOCKPULSE_REDIS_URL=server.url)
    beat_log = tmp_path / "beat.log"
    with open(beat_log, "wb") as log_file:
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "stockpulse", "beat", "-l", "INFO",
                                 "--max-interval", "1"], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: any(r.status == "succeeded" for r in runs_of("crypto_daily_bars")), 45,
                 "beat never ran the schedule")
        # A runtime edit (an entry added in Redis only): it cannot survive Redis losing everything.
        run_python(
            "from celery.schedules import schedule\n"
            "from datetime import timedelta\n"
            "from redbeat import RedBeatSchedulerEntry\n"
            "from stockpulse import app\n"
            "RedBeatSchedulerEntry('runtime-only', 'stockpulse.maintenance.dlq_list', schedule(timedelta(hours=1)),"
            " app=app).save()\n", env)
        time.sleep(11)  # one self-check of beat sees the edit

        # A run in flight: its fetch crawls (slow provider), so Redis goes away under it.
        sim.fault("alpaca", "slow", times=8)
        started = subprocess.run([sys.executable, "-m", "stockpulse.cli", "run", "daily_bars", "--symbols", "AAPL,MSFT",
                                  "--start", "2024-01-01", "--end", "2024-03-29"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=60)
        in_flight = started.stdout.split("queued run ")[1].split()[0]
        time.sleep(2)

        server.stop()
        time.sleep(15)
        restarted_at = datetime.now(UTC)
        server = PrivateRedis(redis_dir, port=port).start(persist=False)  # empty

        # Beat restores its schedules within a minute, without a restart, and says what was lost.
        wait_for(lambda: "restoring 1 from" in beat_log.read_text(errors="replace"), 60,
                 "beat did not restore its schedules:\n" + beat_log.read_text(errors="replace")[-3000:])
        text = beat_log.read_text(errors="replace")
        assert "runtime edits lost: runtime-only" in text
        assert beat.poll() is None
        # Worker and beat reconnected by themselves: a scheduled run after the restart succeeds.
        wait_for(lambda: any(r.status == "succeeded" and r.created_at > restarted_at
                             for r in runs_of("crypto_daily_bars")), 60,
                 "no scheduled run succeeded after the restart:\n" + worker.log()[-3000:])

        # The run in flight: finished by itself, or swept to the DLQ and replayed.
        def final() -> object:
            run = next(r for r in runs_of("daily_bars") if r.id == in_flight)
            return run if run.status in ("succeeded", "partial", "failed") else None

        try:
            run = wait_for(final, 40, "still running")
            outcome = f"completed after the restart ({run.status})"
        except AssertionError:
            swept = json.loads(run_python(
                "import json\nfrom stockpulse.pipeline.runs import sweep_stale\n"
                "print(json.dumps(sweep_stale(5)))\n", env))
            assert in_flight in [r for r, _ in swept]
            replayed = subprocess.run([sys.executable, "-m", "stockpulse.cli", "dlq", "replay", "--all"], cwd=ROOT,
                                      env=env, capture_output=True, text=True, timeout=60)
            assert replayed.returncode == 0, replayed.stderr
            run = wait_for(lambda: next((r for r in runs_of("daily_bars") if r.trigger == "replay"
                                         and r.status == "succeeded"), None), 60, "replay did not succeed")
            outcome = "lost with Redis; swept to the DLQ and replayed"
        if run.status == "failed":  # failed after its retries while Redis was down: recover by replaying
            replayed = subprocess.run([sys.executable, "-m", "stockpulse.cli", "dlq", "replay", "--all"], cwd=ROOT,
                                      env=env, capture_output=True, text=True, timeout=60)
            assert replayed.returncode == 0, replayed.stderr
            outcome += "; failed, replayed from the DLQ"
            time.sleep(1)
            wait_for(lambda: any(r.trigger == "replay" and r.status == "succeeded" for r in runs_of("daily_bars")),
                     60, "replay did not succeed")
        print(f"run in flight: {outcome}")
        with get_engine().connect() as conn:
            count = conn.execute(select(func.count()).select_from(bars).where(bars.c.symbol.in_(["AAPL", "MSFT"]))).scalar()
        assert count == 2 * len(weekdays(date(2024, 1, 1), date(2024, 3, 29)))  # every session, once
    finally:
        if beat.poll() is None:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(30)
        clean_stack.worker.stop()
        server.stop()
