"""Quotas, breakers, the dead-letter queue and quarantine tools with a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date

import pytest
from sqlalchemy import func, select

from stockpulse.db.engine import get_engine
from stockpulse.db.models import pipeline_runs, quarantine
from stockpulse.reliability import dlq
from tests.conftest import ROOT, Stack, bar_count, table_rows, weekdays

pytestmark = pytest.mark.integration
START, END = date(2024, 1, 1), date(2024, 3, 29)
SESSIONS = len(weekdays(START, END))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stockpulse.cli", *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_quota_waits_requeue_without_using_the_retry_budget(clean_stack: Stack) -> None:
    # 2 symbols x 2 years of daily candles = 6 requests at 2 per 2 s: the fetch waits several times,
    # more often than max_retries (3) allows failures.
    worker = clean_stack.restart_worker(STOCKPULSE_PROVIDERS__COINBASE__RATE_LIMIT="2/2second")
    run = clean_stack.run("crypto_daily_bars", start=date(2023, 1, 1), end=date(2024, 12, 31), timeout=90)
    assert run.status == "succeeded", run.error_message
    assert run.records_loaded == 2 * 731
    waits = [json.loads(line) for line in worker.log().splitlines()
             if line.startswith("{") and '"wait": "QuotaWait"' in line]
    assert len(waits) >= 2 and all(0 < w["delay_s"] <= 2 for w in waits)


def test_breaker_opens_backs_off_and_closes(clean_stack: Stack, sim) -> None:
    worker = clean_stack.restart_worker(STOCKPULSE_PROVIDERS__POLYGON__BREAKER__FAIL_MAX="2",
                                        STOCKPULSE_PROVIDERS__POLYGON__BREAKER__RESET_TIMEOUT_S="2")
    sim.fault("polygon", "503", times=2)
    run = clean_stack.run("polygon_daily_bars", symbols=["AAPL"], start=START, end=END)
    assert run.status == "succeeded", run.error_message
    log = worker.log()
    assert "circuit breaker for polygon: closed -> open" in log
    assert "half-open -> closed" in log
    assert '"wait": "BreakerOpen"' in log
    providers = cli("providers")
    assert providers.returncode == 0 and "polygon" in providers.stdout and "closed" in providers.stdout


def test_permanent_failure_lands_in_the_dlq_and_replays_once_fixed(clean_stack: Stack, sim) -> None:
    sim.fault("alpaca", "html", times=1)  # an HTML error page where JSON belongs: transient 502...
    sim.fault("alpaca", "malformed", times=1)  # ...then truncated JSON: permanent
    run = clean_stack.run("daily_bars", symbols=["AAPL", "MSFT"], start=START, end=END)
    assert run.status == "failed"
    [entry] = dlq.entries()
    assert entry.pipeline == "daily_bars" and entry.run_id == run.id and entry.stage == "fetch"
    assert entry.error_type == "PermanentError" and "not valid JSON" in entry.message
    assert entry.attempts >= 1 and entry.traceback and entry.worker
    listed = cli("dlq", "list", "--json")
    assert json.loads(listed.stdout.splitlines()[0])["id"] == entry.id
    shown = json.loads(cli("dlq", "show", entry.id).stdout)
    assert shown["message"] == entry.message and "Traceback" in shown["traceback"]
    dry = cli("dlq", "replay", "--all", "--dry-run")
    assert dry.returncode == 0 and f"would replay {entry.id}" in dry.stdout and dlq.depth() == 1

    replayed = cli("dlq", "replay", entry.id)
    assert replayed.returncode == 0, replayed.stderr
    assert dlq.depth() == 0
    replay_run_id = replayed.stdout.split(" as run ")[1].split()[0]
    replay = clean_stack.wait(replay_run_id)
    assert replay.status == "succeeded" and replay.trigger == "replay"
    assert replay.params["replay_of"] == entry.id and bar_count() == 2 * SESSIONS
    again = cli("dlq", "replay", entry.id)
    assert again.returncode == 1 and "already replayed or purged" in again.stderr
    assert bar_count() == 2 * SESSIONS


def test_replay_resumes_at_the_failed_stage_when_its_input_is_kept(clean_stack: Stack, sim) -> None:
    # A load that fails for good (database-side permanent error) keeps its transformed payload: the replay
    # starts at load and fetches nothing again.
    worker = clean_stack.restart_worker(STOCKPULSE_STAGES__LOAD__MAX_RETRIES="0")

    postgres = clean_stack.backend == "postgresql"
    with get_engine().begin() as conn:
        conn.exec_driver_sql("ALTER TABLE bars ADD CONSTRAINT no_ibm CHECK (symbol <> 'IBM')" if postgres else
                             "CREATE TRIGGER no_ibm BEFORE INSERT ON bars WHEN NEW.symbol = 'IBM' "
                             "BEGIN SELECT RAISE(ABORT, 'no_ibm'); END")
    try:
        run = clean_stack.run("daily_bars", symbols=["IBM"], start=START, end=END)
        assert run.status == "failed" and "no_ibm" in run.error_message
        [entry] = dlq.entries()
        assert entry.stage == "load" and entry.error_type == "PermanentError"
    finally:
        with get_engine().begin() as conn:
            conn.exec_driver_sql("ALTER TABLE bars DROP CONSTRAINT no_ibm" if postgres else "DROP TRIGGER no_ibm")
    fetched_before = sim.requests_made("alpaca")
    result = dlq.replay(entry.id)
    assert result["from_stage"] == "load"
    replay = clean_stack.wait(result["replay_run"])
    assert replay.status == "succeeded" and bar_count() == SESSIONS
    assert sim.requests_made("alpaca") == fetched_before
    assert '"stage": "fetch"' not in worker.log().split(result["replay_run"], 1)[1]


def test_dlq_operations_as_celery_tasks(clean_stack: Stack, sim) -> None:
    run = clean_stack.run("alphavantage_daily_bars", symbols=["ZZZZ"], start=START, end=END)
    assert run.status == "failed" and dlq.depth() == 1
    from stockpulse import app

    listed = app.send_task("stockpulse.maintenance.dlq_list").get(timeout=30)
    assert [e["run_id"] for e in listed] == [run.id]
    purged = app.send_task("stockpulse.maintenance.dlq_purge", kwargs={"entry_id": listed[0]["id"]}).get(timeout=30)
    assert purged == 1 and dlq.depth() == 0


def test_dlq_is_capped(clean_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.config import reset_settings

    monkeypatch.setenv("STOCKPULSE_DLQ__MAX_ENTRIES", "3")
    reset_settings()
    try:
        for i in range(5):
            dlq.add(dlq.DeadLetter(id=f"r{i}:0", pipeline="p", run_id=f"r{i}", batch_no=0, stage="fetch",
                                   task_name="t", kwargs={}, stage_input=None, error_type="E", message="m",
                                   traceback="", attempts=1, first_failure=time.time() + i,
                                   last_failure=time.time() + i, worker="w"))
        assert [e.id for e in dlq.entries()] == ["r4:0", "r3:0", "r2:0"]
        assert cli("dlq", "purge", "--older-than", "1s").returncode == 0
    finally:
        monkeypatch.undo()
        reset_settings()


def test_quarantine_tools(clean_stack: Stack, sim) -> None:
    sim.corrupt("MSFT", "2024-01-02", "negative_volume", provider="alpaca")
    sim.corrupt("MSFT", "2024-01-03", "naive_ts", provider="alpaca")
    run = clean_stack.run("daily_bars", symbols=["MSFT"], start=START, end=END)
    assert run.status == "partial" and bar_count() == SESSIONS - 2
    listed = [json.loads(line) for line in cli("quarantine", "list", "--json").stdout.splitlines()]
    assert len(listed) == 2
    only = cli("quarantine", "list", "--reason", "aware", "--json").stdout.splitlines()
    assert len(only) == 1
    row_id = json.loads(only[0])["id"]
    shown = json.loads(cli("quarantine", "show", str(row_id)).stdout)
    assert shown["record"]["ts"] == "2024-01-03T05:00:00" and shown["reason"] == "ts: Not a valid aware datetime."

    # An operator repairs the record in place (the provider confirmed the zone); reprocess loads it.
    with get_engine().begin() as conn:
        fixed = dict(shown["record"], ts="2024-01-03T00:00:00+00:00")
        conn.execute(quarantine.update().where(quarantine.c.id == row_id).values(record=json.dumps(fixed)))
    out = cli("quarantine", "reprocess", "--pipeline", "daily_bars")
    assert "checked 2: loaded 1, still invalid 1" in out.stdout
    assert bar_count() == SESSIONS - 1 and len(table_rows("quarantine")) == 1
    assert cli("quarantine", "purge").returncode == 2  # refuses to purge everything without --all
    assert "purged 1 records" in cli("quarantine", "purge", "--pipeline", "daily_bars").stdout
    with get_engine().connect() as conn:
        assert conn.execute(select(pipeline_runs.c.status)).scalar() == "partial"


def test_stale_batches_are_swept_to_the_dlq_and_replayable(clean_stack: Stack) -> None:
    """A run whose messages were lost (never picked up) is failed by the sweeper and completed by a replay."""
    from datetime import timedelta

    from sqlalchemy import update

    from stockpulse.config import get_settings
    from stockpulse.db.models import pipeline_run_batches, pipeline_runs
    from stockpulse.errors import utcnow
    from stockpulse.pipeline.runs import BatchPlan, _create_run, get_run, sweep_stale

    pipe = get_settings().pipeline("daily_bars")
    with get_engine().begin() as conn:  # recorded, but its chain never reached the broker
        run_id = _create_run(conn, pipe, "manual", [BatchPlan(0, ("IBM",), START, END)], {"symbols": ["IBM"]})
        conn.execute(update(pipeline_run_batches).values(updated_at=utcnow() - timedelta(hours=1)))
    assert sweep_stale(older_than_s=600) == [(run_id, 0)]
    assert get_run(run_id).status == "failed" and "messages were lost" in get_run(run_id).error_message
    assert sweep_stale(older_than_s=600) == []  # settled batches are not swept twice
    result = dlq.replay(f"{run_id}:0")
    replay = clean_stack.wait(result["replay_run"])
    assert replay.status == "succeeded" and bar_count() == SESSIONS
    with get_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(pipeline_runs)).scalar() == 2
