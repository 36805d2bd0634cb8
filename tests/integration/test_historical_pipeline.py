"""Historical bars end to end: simulator -> real worker -> real database, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from stockpulse.db.engine import get_engine
from stockpulse.db.models import pipeline_run_batches, watermarks
from tests.conftest import ROOT, Stack, bar_count, table_rows, weekdays

pytestmark = pytest.mark.integration
START, END = date(2024, 1, 1), date(2024, 3, 29)
SESSIONS = len(weekdays(START, END))


@pytest.mark.parametrize(("pipeline", "symbols", "expected"), [
    ("daily_bars", 3, 3 * SESSIONS),
    ("polygon_daily_bars", 3, 3 * SESSIONS),
    ("crypto_daily_bars", 2, 2 * ((END - START).days + 1)),
])
def test_provider_to_database_and_idempotent(clean_stack: Stack, pipeline: str, symbols: int, expected: int) -> None:
    first = clean_stack.run(pipeline, start=START, end=END)
    assert first.status == "succeeded", first.error_message
    assert (first.records_fetched, first.records_loaded, first.records_rejected) == (expected, expected, 0)
    assert bar_count() == expected
    snapshot = sorted(tuple(r[:9]) for r in table_rows("bars"))
    second = clean_stack.run(pipeline, start=START, end=END)
    assert second.status == "succeeded" and second.records_loaded == expected
    assert sorted(tuple(r[:9]) for r in table_rows("bars")) == snapshot  # same rows, none duplicated
    assert first.fetch_started_at <= first.load_finished_at and len(first.task_ids) >= 1


def test_alphavantage_compact_series(clean_stack: Stack) -> None:
    end = datetime.now(UTC).date()
    run = clean_stack.run("alphavantage_daily_bars", start=end - timedelta(days=60), end=end)
    assert run.status == "succeeded", run.error_message
    assert run.records_loaded == bar_count() > 0


def test_scheduled_run_fetches_from_the_watermark(clean_stack: Stack, sim) -> None:
    today = datetime.now(UTC).date()
    seed = clean_stack.run("daily_bars", symbols=["AAPL"], start=today - timedelta(days=30), end=today - timedelta(days=10))
    assert seed.status == "succeeded"
    with get_engine().connect() as conn:
        mark = conn.execute(select(watermarks.c.last_ts).where(watermarks.c.symbol == "AAPL")).scalar()
    before = bar_count()
    incremental = clean_stack.run("daily_bars", symbols=["AAPL"], trigger="schedule")
    assert incremental.status == "succeeded"
    with get_engine().connect() as conn:
        batch = conn.execute(select(pipeline_run_batches).where(
            pipeline_run_batches.c.run_id == incremental.id)).one()
    assert batch.start == (mark.date() - timedelta(days=3)).isoformat()  # overlap for late corrections
    assert batch.end == today.isoformat()
    new_sessions = len([d for d in weekdays(mark.date() + timedelta(days=1), today - timedelta(days=1))])
    assert bar_count() == before + new_sessions
    assert incremental.records_fetched == len(weekdays(mark.date() - timedelta(days=3), today - timedelta(days=1)))


def test_invalid_records_are_quarantined_and_the_run_is_partial(clean_stack: Stack, sim) -> None:
    kinds = {"2024-01-02": "negative_volume", "2024-01-03": "high_below_low", "2024-01-04": "nan",
             "2024-01-05": "missing_field", "2024-01-08": "naive_ts", "2024-01-09": "duplicate"}
    for day, kind in kinds.items():
        sim.corrupt("MSFT", day, kind, provider="alpaca")
    run = clean_stack.run("daily_bars", start=START, end=END)
    assert run.status == "partial"
    assert run.records_rejected == len(kinds)
    assert run.records_loaded == 3 * SESSIONS - (len(kinds) - 1)  # a duplicate's first copy loads
    assert bar_count(symbol="MSFT") == SESSIONS - (len(kinds) - 1)
    reasons = {r.reason for r in table_rows("quarantine")}
    assert reasons == {
        "volume: Must be greater than or equal to 0.",
        next(r for r in reasons if r.startswith("high ") and "is below max(open, close, low)" in r),
        "close: Special numeric values (nan or infinity) are not permitted.",
        "volume: Missing data for required field.",
        "ts: Not a valid aware datetime.",
        "duplicate of an earlier record with the same key (symbol, interval, ts) in the same payload",
    }
    rows = table_rows("quarantine")
    assert all(r.run_id == run.id and r.pipeline == "daily_bars" and r.symbol == "MSFT" for r in rows)
    assert json.loads(next(r.record for r in rows if "aware" in r.reason))["ts"] == "2024-01-08T05:00:00"


def test_transient_failures_retry_with_backoff_then_succeed(clean_stack: Stack, sim) -> None:
    sim.fault("alpaca", "503", times=2)
    run = clean_stack.run("daily_bars", symbols=["AAPL"], start=START, end=END)
    assert run.status == "succeeded" and run.records_loaded == SESSIONS
    with get_engine().connect() as conn:
        batch = conn.execute(select(pipeline_run_batches).where(pipeline_run_batches.c.run_id == run.id)).one()
    assert batch.attempts["fetch"] == 3
    assert "retrying fetch" in clean_stack.worker.log()


def test_rate_limit_with_retry_after_is_honoured(clean_stack: Stack, sim) -> None:
    sim.fault("polygon", "429")
    started = time.monotonic()
    run = clean_stack.run("polygon_daily_bars", symbols=["AAPL"], start=START, end=END)
    assert run.status == "succeeded" and time.monotonic() - started >= 1.0  # Retry-After: 1


def test_permanent_error_fails_the_run_without_retrying(clean_stack: Stack, sim) -> None:
    run = clean_stack.run("alphavantage_daily_bars", symbols=["ZZZZ"], start=START, end=END)
    assert run.status == "failed"
    assert run.error_type == "PermanentError" and "Invalid API call" in run.error_message
    with get_engine().connect() as conn:
        batch = conn.execute(select(pipeline_run_batches).where(pipeline_run_batches.c.run_id == run.id)).one()
    assert batch.attempts == {"fetch": 1} and bar_count() == 0


def test_retries_exhausted_fail_the_run(clean_stack: Stack, sim) -> None:
    sim.fault("coinbase", "500", times=10)
    run = clean_stack.run("crypto_daily_bars", symbols=["BTC-USD"], start=START, end=END)
    assert run.status == "failed" and run.error_type == "TransientError" and "HTTP 500" in run.error_message


def test_large_payloads_travel_by_reference_and_are_deleted(clean_stack: Stack, redis_client) -> None:
    run = clean_stack.run("daily_bars", start=date(2020, 1, 1), end=END)
    assert run.status == "succeeded"
    assert "'ref': 'stockpulse:payload:" in clean_stack.worker.log()  # test config: inline up to 4 KiB
    # The load deletes its payloads right after its commit, which is what marks the run finished.
    deadline = time.monotonic() + 10
    while list(redis_client.scan_iter("stockpulse:payload:*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(redis_client.scan_iter("stockpulse:payload:*")) == []


def test_celery_call_and_cli_run(clean_stack: Stack) -> None:
    env = dict(os.environ)
    call = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "stockpulse", "call", "stockpulse.pipeline.run", "--kwargs",
         json.dumps({"pipeline": "crypto_daily_bars", "symbols": ["BTC-USD"], "start": "2024-01-01",
                     "end": "2024-01-31"})],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert call.returncode == 0, call.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and bar_count() < 31:
        time.sleep(0.2)
    assert bar_count() == 31
    cli = subprocess.run([sys.executable, "-m", "stockpulse.cli", "run", "daily_bars", "--symbols", "IBM",
                          "--start", "2024-01-01", "--end", "2024-01-31", "--wait", "--timeout", "60"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert cli.returncode == 0, cli.stderr
    assert "succeeded: fetched 23, loaded 23, rejected 0" in cli.stdout
    listed = subprocess.run([sys.executable, "-m", "stockpulse.cli", "runs", "--json", "--limit", "5"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    runs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["pipeline"] for r in runs} == {"crypto_daily_bars", "daily_bars"}
    assert all(r["status"] == "succeeded" for r in runs)


def test_cli_run_wait_exits_nonzero_on_failure(clean_stack: Stack) -> None:
    result = subprocess.run([sys.executable, "-m", "stockpulse.cli", "run", "alphavantage_daily_bars",
                             "--symbols", "ZZZZ", "--wait", "--timeout", "60"],
                            cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=90)
    assert result.returncode == 1 and "failed" in result.stdout and "Invalid API call" in result.stdout


def test_backfill_chunks_the_range(clean_stack: Stack) -> None:
    result = subprocess.run([sys.executable, "-m", "stockpulse.cli", "backfill", "crypto_daily_bars",
                             "--start", "2024-01-01", "--end", "2024-03-31", "--chunk-days", "30"],
                            cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "queued 4 backfill runs" in result.stdout
    assert bar_count() == 2 * 91
    with get_engine().connect() as conn:
        from stockpulse.db.models import pipeline_runs

        triggers = conn.execute(select(pipeline_runs.c.trigger, func.count()).group_by(pipeline_runs.c.trigger)).all()
    assert triggers == [("backfill", 4)]


def test_a_finished_run_is_not_reopened_by_a_redelivered_stage(clean_stack: Stack) -> None:
    from stockpulse.pipeline import runs as runs_module

    run = clean_stack.run("daily_bars", symbols=["AAPL"], start=START, end=END)
    batch = runs_module.stage_started(run.id, 0, "load", "redelivered", 1)
    assert batch.status == "loaded"
    assert runs_module.get_run(run.id).status == "succeeded"


def test_worker_logs_are_json_lines_carrying_run_and_task_ids(clean_stack: Stack) -> None:
    run = clean_stack.run("daily_bars", symbols=["AAPL"], start=START, end=END)
    deadline = time.monotonic() + 10  # the load logs its line just after the commit that ends the run
    while "loaded 65 rows" not in clean_stack.worker.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    records = []
    for line in clean_stack.worker.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    mine = [r for r in records if r.get("run_id") == run.id]
    stages = {r["stage"] for r in mine if "stage" in r}
    assert stages == {"fetch", "transform", "load"}
    assert all(r["task_id"] and r["task_name"].startswith("stockpulse.pipeline.") for r in mine)
    assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in mine)
    assert any(r["message"].startswith("loaded 65 rows") for r in mine)
    # One start and one end event per stage, the end carrying its counts, provider, data type and duration.
    for stage, counts in (("fetch", "pages"), ("transform", "records_valid"), ("load", "records_loaded")):
        started = [r for r in mine if r["message"] == f"{stage} started"]
        ended = [r for r in mine if r.get("stage") == stage and "duration_ms" in r]
        assert len(started) == len(ended) == 1, (stage, started, ended)
        assert started[0]["provider"] == ended[0]["provider"] == "alpaca" and ended[0]["data_type"] == "bars"
        assert ended[0][counts] > 0 and ended[0]["duration_ms"] >= 0
    assert next(r for r in mine if r.get("stage") == "load" and "duration_ms" in r)["records_loaded"] == 65
    log = clean_stack.worker.log()
    assert "test-key" not in log and "test-secret" not in log  # the configured Alpaca key and secret


def test_inspect_registered_lists_the_pipeline_tasks(clean_stack: Stack) -> None:
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "stockpulse", "inspect", "registered",
                             "--timeout", "5"], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for task in ("stockpulse.pipeline.run", "stockpulse.pipeline.fetch", "stockpulse.pipeline.transform",
                 "stockpulse.pipeline.load"):
        assert task in result.stdout
