"""A canary API key goes through failures; no sink may ever show it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date

import pytest

from stockpulse.reliability import dlq
from tests.conftest import CANARY_KEY, ROOT, Stack, table_rows

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
START, END = date(2024, 1, 1), date(2024, 3, 29)


def test_canary_key_never_reaches_logs_dlq_runs_or_redis(clean_stack: Stack, sim, redis_client) -> None:
    worker = clean_stack.restart_worker(
        STOCKPULSE_PROVIDERS__ALPHAVANTAGE__API_KEY=CANARY_KEY,  # travels in the query string
        STOCKPULSE_PROVIDERS__POLYGON__API_KEY=CANARY_KEY,  # travels in a header
        STOCKPULSE_PROVIDERS__POLYGON__REQUEST_RETRIES="1",
    )
    sim.fault("alphavantage", "drop", times=10)  # connection errors until retries are exhausted
    sim.fault("polygon", "timeout", times=1)
    sim.fault("polygon", "html", times=10)
    failed = [clean_stack.run("alphavantage_daily_bars", symbols=["IBM"], start=START, end=END, timeout=120),
              clean_stack.run("polygon_daily_bars", symbols=["AAPL"], start=START, end=END, timeout=120)]
    assert [r.status for r in failed] == ["failed", "failed"]
    sim.clear()
    ok = clean_stack.run("alphavantage_daily_bars", symbols=["ZZZZ"], start=START, end=END)
    assert ok.status == "failed" and dlq.depth() == 3

    sinks = {
        "worker log": worker.log(),
        "dlq": json.dumps([e.__dict__ for e in dlq.entries()], default=str),
        "runs": json.dumps([dict(r._mapping) for r in table_rows("pipeline_runs")], default=str),
        "batches": json.dumps([dict(r._mapping) for r in table_rows("pipeline_run_batches")], default=str),
        "quarantine": json.dumps([dict(r._mapping) for r in table_rows("quarantine")], default=str),
        "cli": subprocess.run([sys.executable, "-m", "stockpulse.cli", "dlq", "list", "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60).stdout,
    }
    redis_dump = []
    for key in redis_client.scan_iter("*"):
        kind = redis_client.type(key)
        if kind == b"string":
            redis_dump.append(redis_client.get(key) or b"")
        elif kind == b"hash":
            redis_dump += list(redis_client.hgetall(key).values())
        elif kind == b"list":
            redis_dump += redis_client.lrange(key, 0, -1)
        elif kind == b"zset":
            redis_dump += [m for m, _ in redis_client.zrange(key, 0, -1, withscores=True)]
    sinks["redis (task messages, results, payloads, DLQ)"] = b"\n".join(redis_dump).decode(errors="replace")
    assert "IBM" in sinks["dlq"] or "alphavantage" in sinks["dlq"]  # the sinks are not empty
    leaks = [name for name, text in sinks.items() if CANARY_KEY in text]
    assert leaks == []
