"""Resumable, previewable backfills: chunks, earlier runs per chunk, --reprocess, quota estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pytest

from tests.conftest import ROOT, SimControl, Stack, bar_count

pytestmark = pytest.mark.integration
RANGE = ["--start", "2024-01-01", "--end", "2024-03-31", "--chunk-days", "30"]  # 4 chunks: 30+30+30+1 days


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stockpulse.cli", *args],
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_plan_chunks_and_estimates_requests_against_the_quota(clean_stack: Stack) -> None:
    from stockpulse.config import reset_settings
    from stockpulse.pipeline.backfill import plan_backfill

    plan = plan_backfill("crypto_daily_bars", date(2024, 1, 1), date(2024, 3, 31), chunk_days=30)
    assert [c.days for c in plan.chunks] == [
        "2024-01-01..2024-01-30",
        "2024-01-31..2024-02-29",
        "2024-03-01..2024-03-30",
        "2024-03-31..2024-03-31",
    ]
    assert all(c.enqueue and c.reason == "new" for c in plan.chunks)
    assert [c.requests for c in plan.chunks] == [2, 2, 2, 2]  # one 300-candle window per product
    # A year of Coinbase dailies needs two windows per product.
    assert (
        plan_backfill("crypto_daily_bars", date(2024, 1, 1), date(2024, 12, 31), chunk_days=366).requests == 4
    )
    # Alpaca pages hold `page_limit` (700 in tests) bars across a batch's symbols (batches of 2 in tests):
    # 2 x 262 weekdays fit one page, and IBM's batch needs one more.
    assert plan_backfill("daily_bars", date(2024, 1, 1), date(2024, 12, 31), chunk_days=366).requests == 2
    assert plan_backfill("daily_bars", date(2024, 1, 1), date(2025, 12, 31), chunk_days=731).requests == 3
    os.environ["STOCKPULSE_PROVIDERS__ALPHAVANTAGE__RATE_LIMIT"] = "25/day"
    reset_settings()
    try:
        plan = plan_backfill("alphavantage_daily_bars", date(2024, 1, 1), date(2024, 12, 31), chunk_days=7)
        assert plan.requests == 53 * 3  # one request per symbol and chunk
        assert plan.quota_seconds() == 6 * 86400  # 159 requests = 7 windows of 25: 6 days of waiting at least
        assert "at its quota of 25/day that takes at least 6.0 days" in plan.summary()
    finally:
        del os.environ["STOCKPULSE_PROVIDERS__ALPHAVANTAGE__RATE_LIMIT"]
        reset_settings()


def test_interrupted_backfill_resumes_without_refetching_completed_chunks(
    clean_stack: Stack, sim: SimControl
) -> None:
    from stockpulse.pipeline.backfill import plan_backfill

    # The provider fails the first requests for good (no retries): the chunks that asked first fail, the
    # rest succeed, as when a backfill is cut short by an outage.
    clean_stack.restart_worker(STOCKPULSE_STAGES__FETCH__MAX_RETRIES="0")
    sim.fault("coinbase", "empty", times=2)
    first = cli("backfill", "crypto_daily_bars", *RANGE)
    assert first.returncode == 1 and "queued 4 backfill runs" in first.stdout, first.stderr
    plan = plan_backfill("crypto_daily_bars", date(2024, 1, 1), date(2024, 3, 31), chunk_days=30)
    failed = [c for c in plan.chunks if c.enqueue]
    done = [c for c in plan.chunks if not c.enqueue]
    assert failed and done, [c.reason for c in plan.chunks]
    assert all("failed: again" in c.reason for c in failed)
    assert all(c.reason.startswith("done (run ") for c in done)

    preview = cli("backfill", "crypto_daily_bars", *RANGE, "--dry-run")
    assert preview.returncode == 0, preview.stderr
    lines = preview.stdout.splitlines()
    for chunk in plan.chunks:
        [line] = [x for x in lines if x.startswith(chunk.days)]
        assert ("enqueue" if chunk.enqueue else "skip") in line
    assert f"dry run: {len(failed)} of 4 chunks to enqueue" in preview.stdout
    assert (
        cli("backfill", "crypto_daily_bars", *RANGE, "--reprocess", "none", "--dry-run").stdout.count(
            "  skip  "
        )
        == 4
    )

    before = sim.requests_made("coinbase")
    second = cli("backfill", "crypto_daily_bars", *RANGE)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"queued {len(failed)} backfill runs" in second.stdout
    # Only the failed chunks were fetched again: 2 products x one window each.
    assert sim.requests_made("coinbase") - before == 2 * len(failed)
    assert bar_count() == 2 * 91

    # Everything done: nothing to enqueue; --reprocess all runs every chunk again without duplicating a row.
    assert "queued 0 backfill runs" in cli("backfill", "crypto_daily_bars", *RANGE).stdout
    again = cli("backfill", "crypto_daily_bars", *RANGE, "--reprocess", "all")
    assert again.returncode == 0 and "queued 4 backfill runs" in again.stdout
    assert bar_count() == 2 * 91


def test_chunks_spread_across_every_worker_on_the_queue(clean_stack: Stack) -> None:
    from tests.conftest import start_worker

    second = start_worker("second", queues="historical")
    try:
        result = cli("backfill", "crypto_daily_bars", "--start", "2024-01-01", "--end", "2024-03-31",
                     "--chunk-days", "12")
        assert result.returncode == 0 and "queued 8 backfill runs" in result.stdout, result.stderr
        from stockpulse.pipeline.runs import get_run
        from tests.conftest import table_rows

        run_ids = {r.id for r in table_rows("pipeline_runs") if r.trigger == "backfill"}
        assert all(get_run(r).status == "succeeded" for r in run_ids)

        def fetched_by(log: str) -> set[str]:
            records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
            return {r["run_id"] for r in records if r.get("message") == "fetch started"}

        mine, theirs = fetched_by(clean_stack.worker.log()), fetched_by(second.log())
        assert mine & run_ids and theirs & run_ids, (len(mine & run_ids), len(theirs & run_ids))
        assert (mine | theirs) >= run_ids
    finally:
        second.stop()
