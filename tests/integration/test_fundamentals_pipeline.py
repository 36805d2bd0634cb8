"""Fundamentals end to end: SEC facts with restatements kept, profiles updated in place, idempotent loads."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import text

from stockpulse.sim.data import company_facts
from tests.conftest import ROOT, Stack, table_rows

pytestmark = pytest.mark.integration
SIM_SEED = 7


def expected_facts(symbols: tuple[str, ...]) -> int:
    today = datetime.now(UTC).date()
    return sum(len(company_facts(SIM_SEED, s, today=today)) for s in symbols)


def test_sec_facts_keep_restatements_and_answer_latest_as_of_a_date(clean_stack: Stack) -> None:
    from stockpulse.datatypes.fundamentals import facts_as_of
    from stockpulse.db.engine import get_engine

    run = clean_stack.run("sec_facts", timeout=120)  # first run: lookback_days 36500, i.e. everything
    assert run.status == "succeeded", run.error_message
    rows = table_rows("financial_facts")
    assert len(rows) == run.records_loaded == expected_facts(("AAPL", "MSFT", "IBM"))
    revenue_2021 = [r for r in rows if r.symbol == "AAPL" and r.concept == "us-gaap:Revenues"
                    and (r.period_start, r.period_end) == ("2021-01-01", "2021-12-31")]
    assert sorted(r.form for r in revenue_2021) == ["10-K", "10-K", "10-K/A"]
    original = min(revenue_2021, key=lambda r: r.filed).value  # the 10-K for 2021
    restated = next(r for r in revenue_2021 if r.form == "10-K/A")
    assert restated.value != original
    with get_engine().connect() as conn:
        latest = conn.execute(text(
            "SELECT value, form FROM financial_facts_latest WHERE symbol = 'AAPL' AND concept = 'us-gaap:Revenues' "
            "AND period_start = '2021-01-01' AND period_end = '2021-12-31'")).all()
        # The newest filing for the period: the next 10-K's comparative, which carries the restated value.
        assert [v for v, _ in latest] == [restated.value]
        before = facts_as_of(conn, "AAPL", date(2022, 3, 1), concept="us-gaap:Revenues")
        after = facts_as_of(conn, "AAPL", date(2022, 6, 1), concept="us-gaap:Revenues")
    pick = lambda found: next(r.value for r in found if (r.period_start, r.period_end) == ("2021-01-01", "2021-12-31"))  # noqa: E731
    assert pick(before) == original and pick(after) == restated.value
    watermarks = {w.symbol: w.last_ts for w in table_rows("watermarks") if w.pipeline == "sec_facts"}
    assert watermarks["AAPL"].date().isoformat() == max(r.filed for r in rows if r.symbol == "AAPL")

    # Incremental: only facts filed since the watermark (minus the overlap) travel; nothing changes.
    again = clean_stack.run("sec_facts")
    assert again.status == "succeeded" and again.records_loaded < run.records_loaded
    assert len(table_rows("financial_facts")) == len(rows)

    # A full refresh upserts every fact again, and still duplicates nothing.
    refresh = subprocess.run([sys.executable, "-m", "stockpulse.cli", "run", "sec_facts", "--full-refresh",
                              "--wait", "--timeout", "120"], cwd=ROOT, env=dict(os.environ), capture_output=True,
                             text=True, timeout=180)
    assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    assert f"loaded {run.records_loaded}" in refresh.stdout or str(run.records_loaded) in refresh.stdout
    assert sorted(map(tuple, table_rows("financial_facts"))) == sorted(map(tuple, rows))


def test_profiles_are_one_row_per_symbol_and_source_updated_in_place(clean_stack: Stack) -> None:
    first = [clean_stack.run("finnhub_fundamentals"), clean_stack.run("alphavantage_overview")]
    assert [r.status for r in first] == ["succeeded", "succeeded"]
    profiles = table_rows("company_profiles")
    assert sorted((p.symbol, p.source) for p in profiles) == sorted(
        (s, src) for s in ("AAPL", "MSFT", "IBM") for src in ("finnhub", "alphavantage"))
    facts = table_rows("financial_facts")
    assert {f.source for f in facts} == {"finnhub", "alphavantage"}
    again = [clean_stack.run("finnhub_fundamentals"), clean_stack.run("alphavantage_overview")]
    assert [r.status for r in again] == ["succeeded", "succeeded"]
    assert sorted(map(tuple, table_rows("company_profiles"))) == sorted(map(tuple, profiles))
    assert len(table_rows("financial_facts")) == len(facts)


def test_unknown_ticker_fails_the_batch_with_a_clear_message(clean_stack: Stack) -> None:
    from stockpulse.reliability import dlq

    run = clean_stack.run("sec_facts", symbols=["AAPL", "ZZZZ"])
    assert run.status == "failed"
    assert "no CIK for ZZZZ in SEC's company_tickers.json" in run.error_message
    assert dlq.depth() == 1
