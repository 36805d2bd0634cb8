"""Beat with RedBeat seeding from the schedule file, and the standalone stack from nothing."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from sqlalchemy import select

from stockpulse.db.engine import get_engine
from stockpulse.db.models import pipeline_runs
from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.integration


def test_beat_seeds_redbeat_from_the_beat_schedule_path_and_fires(clean_stack: Stack, tmp_path: Path,
                                                              redis_client) -> None:
    schedule = tmp_path / "beat_schedule.yaml"
    schedule.write_text(yaml.safe_dump({"timezone": "America/New_York", "schedules": {
        "crypto-every-2s": {"pipeline": "crypto_daily_bars", "every": "2s", "symbols": ["BTC-USD"]}}}))
    env = dict(os.environ, STOCKPULSE_BEAT_SCHEDULE_PATH=str(schedule))
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "stockpulse", "beat", "-l", "INFO",
                             "--max-interval", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, rows = time.monotonic() + 45, []
        while time.monotonic() < deadline:
            with get_engine().connect() as conn:
                rows = conn.execute(select(pipeline_runs.c.trigger, pipeline_runs.c.status).where(
                    pipeline_runs.c.pipeline == "crypto_daily_bars")).all()
            if any(r.status == "succeeded" for r in rows):
                break
            time.sleep(0.5)
        if not any(r.trigger == "schedule" and r.status == "succeeded" for r in rows):
            if beat.poll() is None:
                os.killpg(beat.pid, signal.SIGTERM)
            pytest.fail(f"no scheduled run: {rows}\n{beat.communicate(timeout=30)[0].decode()[-3000:]}")
        assert redis_client.exists("stockpulse:redbeat:crypto-every-2s")
    finally:
        if beat.poll() is None:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(30)
        for key in redis_client.scan_iter("stockpulse:redbeat*"):
            redis_client.delete(key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standalone_from_nothing_loads_bars_and_stops_cleanly(tmp_path: Path) -> None:
    """No Redis at the configured URL and no database: standalone starts its own and a run succeeds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPULSE_")}
    env.update({
        "STOCKPULSE_HOME": str(ROOT),
        "STOCKPULSE_VAR_DIR": str(tmp_path / "var"),
        "STOCKPULSE_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'stockpulse.db'}",
        "STOCKPULSE_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",  # nothing listens there
        "STOCKPULSE_EXPORTER__PORT": str(exporter_port := _free_port()),
    })
    flower_port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stockpulse.cli", "standalone", "--flower-port", str(flower_port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: list[psutil.Process] = []
    try:
        deadline, output = time.monotonic() + 90, ""
        succeeded = False
        while time.monotonic() < deadline and not succeeded:
            time.sleep(1)
            children = psutil.Process(proc.pid).children(recursive=True) or children
            runs = subprocess.run([sys.executable, "-m", "stockpulse.cli", "runs", "--json"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=30)
            succeeded = '"status": "succeeded"' in runs.stdout and '"pipeline": "daily_bars"' in runs.stdout
        assert succeeded, runs.stdout + runs.stderr
        names = {" ".join(c.cmdline()) for c in children if c.is_running()}
        assert any("redis-server" in n for n in names)
        assert any(" worker " in n for n in names) and any(" beat " in n for n in names)
        assert any(" flower " in n for n in names) and any(" exporter " in n for n in names)
        assert any("-P threads" in n and "standalone-realtime@" in n for n in names)
        # The keyless default stream (Coinbase matches, here the simulator's) loads trades with no key set.
        db = sqlite3.connect(tmp_path / "var" / "stockpulse.db")
        try:
            while db.execute("SELECT count(*) FROM trades WHERE source = 'coinbase'").fetchone()[0] == 0:
                assert time.monotonic() < deadline + 30, "no trades from the default crypto stream"
                time.sleep(1)
        finally:
            db.close()
        status = subprocess.run([sys.executable, "-m", "stockpulse.cli", "status"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "daily_bars" in status.stdout and "succeeded" in status.stdout
        metrics = requests.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=10).text
        assert 'stockpulse_pipeline_last_run_status{data_type="bars",pipeline="daily_bars",provider="alpaca",' \
               'queue="historical",status="succeeded"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "StockPulse standalone is up" in output and "private redis-server" in output
    time.sleep(0.5)
    leftovers = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], [c.cmdline() for c in leftovers]
