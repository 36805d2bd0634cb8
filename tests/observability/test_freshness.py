"""Freshness expectations follow the exchange calendar: a daily bar is due at close + settle_hours,
ticks only during sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from stockpulse.config import PipelineSettings
from stockpulse.config import get_settings as take_settings
from stockpulse.observability.freshness import assess
from stockpulse.universes import Universe
from tests.conftest import ROOT, Stack


def pipe(data_type: str = "bars", provider: str = "alpaca", **options: object) -> PipelineSettings:
    return PipelineSettings("p", data_type, provider, Universe("u", tickers=("AAPL", "MSFT")), options=dict(options))


def day(d: str) -> datetime:
    return datetime.fromisoformat(d).replace(tzinfo=UTC)


def test_daily_bar_is_due_at_close_plus_settle_including_early_closes() -> None:
    # Friday 2026-11-27 closes at 13:00 New York (18:00 UTC): its bar is due at 20:00 UTC.
    marks = {"AAPL": day("2026-11-27"), "MSFT": day("2026-11-25")}
    before = assess(pipe(), marks, day("2026-11-27T19:59"))
    assert before.expected and not before.late and before.stale_symbols == 0  # both have Wednesday's
    assert "2026-11-25 daily bar" in before.rule  # Thursday was Thanksgiving: no session
    after = assess(pipe(), marks, day("2026-11-27T21:00"))
    assert after.stale_symbols == 1 and after.overdue_s == 3600
    assert "the 2026-11-27 daily bar, due 2026-11-27 20:00 UTC" == after.rule
    # Not "stale" all weekend: Saturday and Sunday still expect Friday's bar, which is there.
    complete = {"AAPL": day("2026-11-27"), "MSFT": day("2026-11-27")}
    assert not assess(pipe(), complete, day("2026-11-29T23:00")).late
    # A longer settle moves the deadline.
    assert not assess(pipe(settle_hours=4), marks, day("2026-11-27T21:00")).late


def test_crypto_daily_bars_are_due_every_day() -> None:
    coinbase = pipe(provider="coinbase")
    marks = {"AAPL": day("2026-11-28"), "MSFT": day("2026-11-28")}
    assert not assess(coinbase, marks, day("2026-11-30T01:59")).late  # Sunday's bar due Monday 02:00
    late = assess(coinbase, marks, day("2026-11-30T03:00"))
    assert late.stale_symbols == 2 and late.overdue_s == 3600


def test_ticks_are_expected_only_during_sessions() -> None:
    alpaca = pipe("trades")  # Alpaca's stream follows XNYS
    friday = {"AAPL": day("2026-11-27T17:59:59")}
    weekend = assess(alpaca, friday, day("2026-11-28T15:00"))
    assert not weekend.expected and not weekend.late and "closed" in weekend.rule
    # Monday opens 14:30 UTC: ticks are due 300 s after the open, whatever Friday's last tick was.
    assert not assess(alpaca, friday, day("2026-11-30T14:34")).late
    assert assess(alpaca, friday, day("2026-11-30T15:00")).overdue_s == 25 * 60
    live = {"AAPL": day("2026-11-30T14:59:30")}
    assert not assess(alpaca, live, day("2026-11-30T15:00")).late
    assert assess(alpaca, {}, day("2026-11-30T15:00")).overdue_s == float("inf")


def test_round_the_clock_streams_and_untimed_data_types() -> None:
    coinbase = pipe("trades", provider="coinbase", freshness_lag_s=60)
    now = day("2026-11-29T03:00")  # a Sunday night: crypto trades
    assert assess(coinbase, {"AAPL": now - timedelta(minutes=10)}, now).overdue_s == 540
    news = assess(pipe("news", provider="finnhub"), {}, now)
    assert not news.expected and not news.late


@pytest.mark.integration
def test_status_and_exporter_report_what_the_calendar_expects(clean_stack: Stack) -> None:
    from stockpulse.observability.exporter import StatusCollector
    from stockpulse.observability.freshness import daily_expectation
    from stockpulse.observability.status import take_snapshot

    now = datetime.now(UTC)
    session, _ = daily_expectation(take_settings().pipeline("daily_bars"), now)
    run = clean_stack.run("daily_bars", symbols=["AAPL"], start=session - timedelta(days=10), end=session)
    assert run.status == "succeeded"
    by_name = {p.name: p for p in take_snapshot().pipelines}
    daily = by_name["daily_bars"].freshness
    assert daily.expected and daily.stale_symbols == 2 and daily.late  # MSFT and IBM never loaded
    assert f"the {session} daily bar" in daily.rule
    assert by_name["finnhub_news"].freshness.expected is False
    samples = {(s.name, s.labels.get("pipeline")): s.value for family in StatusCollector(0).collect()
               for s in family.samples}
    assert samples[("stockpulse_data_stale_symbols", "daily_bars")] == 2
    assert samples[("stockpulse_data_expected", "daily_bars")] == 1
    assert samples[("stockpulse_data_overdue_seconds", "daily_bars")] == pytest.approx(daily.overdue_s, abs=60)
    assert ("stockpulse_data_overdue_seconds", "alpaca_trades") not in samples  # disabled: not assessed
    cli_run = subprocess.run([sys.executable, "-m", "stockpulse.cli", "status"], cwd=ROOT, env=dict(os.environ),
                             capture_output=True, text=True, timeout=60)
    assert "late" in cli_run.stdout and "2 symbols" in cli_run.stdout, cli_run.stdout + cli_run.stderr
