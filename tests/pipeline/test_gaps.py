"""Gap detection on daily bars against the exchange calendar, and filling exactly the gaps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import ROOT, Stack, table_rows

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # the last settled XNYS session is Monday 2026-11-30


def store_bars(symbol: str, days: list[date]) -> None:
    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import bars

    with get_engine().begin() as conn:
        conn.execute(bars.insert(), [
            {"symbol": symbol, "interval": "1d", "ts": datetime.combine(d, datetime.min.time(), UTC), "open": 10.0,
             "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0, "source": "alpaca",
             "ingested_at": datetime.now(UTC)} for d in days])


def weekdays(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1) if (start + timedelta(days=i)).weekday() < 5]


def test_missing_sessions_follow_the_calendar(clean_stack: Stack) -> None:
    from stockpulse.pipeline.gaps import find_gaps

    november = weekdays(date(2026, 11, 2), date(2026, 11, 30))
    store_bars("AAPL", [d for d in november if d not in (date(2026, 11, 10), date(2026, 11, 11))])
    store_bars("MSFT", [d for d in november if d >= date(2026, 11, 16)])  # listed mid-month
    found = {g.symbol: g for g in find_gaps("daily_bars", start=date(2026, 11, 2), now=NOW)}
    # 21 weekdays, less Thanksgiving (26th); the 27th (early close) is a session.
    assert found["AAPL"].expected == 20 and found["AAPL"].missing == (date(2026, 11, 10), date(2026, 11, 11))
    assert found["AAPL"].ranges() == [(date(2026, 11, 10), date(2026, 11, 11))]
    assert found["MSFT"].missing == ()  # days before its first bar are not gaps
    assert found["IBM"].expected == 20 and len(found["IBM"].missing) == 20  # nothing stored at all
    assert found["IBM"].ranges() == [(date(2026, 11, 2), date(2026, 11, 30))]
    # Before the close has settled, today's session is not expected yet.
    early = find_gaps("daily_bars", symbols=["AAPL"], start=date(2026, 11, 2),
                      now=datetime(2026, 11, 30, 20, 0, tzinfo=UTC))
    assert early[0].expected == 19


def test_fill_enqueues_backfills_for_exactly_the_gaps(clean_stack: Stack) -> None:
    store_bars("AAPL", [d for d in weekdays(date(2026, 11, 2), date(2026, 11, 30))
                        if d not in (date(2026, 11, 10), date(2026, 11, 11))])
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "stockpulse.cli", "gaps", "daily_bars", "--symbols", "AAPL",
                             "--start", "2026-11-02", "--end", "2026-11-30", "--fill", "--json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["missing"] == 2 and report["symbols"] == {"AAPL": ["2026-11-10..2026-11-11"]}
    [run_id] = result.stderr.split("queued 1 backfill runs: ")[1].split()
    run = clean_stack.wait(run_id)
    assert run.status == "succeeded" and run.trigger == "backfill"
    [batch] = [b for b in table_rows("pipeline_run_batches") if b.run_id == run_id]
    assert (batch.symbols, batch.start, batch.end) == (["AAPL"], "2026-11-10", "2026-11-11")
    again = subprocess.run([sys.executable, "-m", "stockpulse.cli", "gaps", "daily_bars", "--symbols", "AAPL",
                            "--start", "2026-11-02", "--end", "2026-11-30"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "AAPL: 0 of 20 sessions missing"


def test_gaps_cover_daily_bars_only(clean_stack: Stack) -> None:
    from stockpulse.errors import ConfigError
    from stockpulse.pipeline.gaps import find_gaps

    with pytest.raises(ConfigError, match="gap detection covers daily bars"):
        find_gaps("finnhub_news")


def test_crypto_expects_every_day(clean_stack: Stack) -> Any:
    from stockpulse.pipeline.gaps import find_gaps

    found = find_gaps("crypto_daily_bars", symbols=["BTC-USD"], start=date(2026, 11, 1), end=date(2026, 11, 30),
                      now=NOW)
    assert found[0].expected == 30 and len(found[0].missing) == 30


def test_daily_detection_is_kept_for_status_and_the_exporter(clean_stack: Stack, redis_client: Any) -> None:
    from stockpulse.celery_app import app
    from stockpulse.observability.exporter import StatusCollector
    from stockpulse.observability.status import take_snapshot

    counts = app.send_task("stockpulse.maintenance.detect_gaps").get(timeout=60)  # on a real worker
    assert counts["daily_bars"] > 0 and "finnhub_news" not in counts  # nothing stored: every session missing
    assert {p.name: p.missing_sessions for p in take_snapshot().pipelines}["daily_bars"] == counts["daily_bars"]
    samples = {(s.name, s.labels.get("pipeline")): s.value for family in StatusCollector(0).collect()
               for s in family.samples}
    assert samples[("stockpulse_missing_sessions", "daily_bars")] == counts["daily_bars"]
    redis_client.delete("stockpulse:gaps:missing")
