from __future__ import annotations

from datetime import date

import pytest
import requests

from stockpulse.config import ProviderSettings
from stockpulse.datatypes.fundamentals import FUNDAMENTALS
from stockpulse.errors import PermanentError, TransientError
from stockpulse.providers.sec import check_response, validate_settings
from stockpulse.sim.data import sim_cik
from tests.conftest import table_rows
from tests.providers.helpers import fetch

UA = "StockPulse tests tests@example.com"
EVERYTHING = date(1990, 1, 1)


def facts(sim_url: str, symbols: tuple[str, ...] = ("AAPL",), start: date = EVERYTHING, **settings: object) -> list:
    records, _ = fetch("sec", sim_url, symbols, start, date.today(), data_type="fundamentals",
                       user_agent=settings.pop("user_agent", UA), **settings)
    return records


def test_company_facts_in_long_form_with_every_filing(sim_url: str, sim, database: str) -> None:
    records = facts(sim_url, ("AAPL", "MSFT"))
    result = FUNDAMENTALS.validate(records)
    assert result.rejected == [] and len(result.valid) == len(records) > 100
    revenue_2021 = [r for r in result.valid if r["symbol"] == "AAPL" and r["concept"] == "us-gaap:Revenues"
                    and r["period_start"] == "2021-01-01" and r["period_end"] == "2021-12-31"]
    # The 10-K, the next year's comparative and a 10-K/A restatement: three filings, two values.
    assert sorted(r["form"] for r in revenue_2021) == ["10-K", "10-K", "10-K/A"]
    assert len({r["value"] for r in revenue_2021}) == 2
    assets = next(r for r in result.valid if r["concept"] == "us-gaap:Assets")
    assert assets["period_start"] == assets["period_end"]  # an instant
    assert {r["unit"] for r in result.valid} >= {"USD", "shares", "USD/shares"}
    # The ticker map was cached in the database, CIKs as SEC has them.
    cached = {row.ticker: row.cik for row in table_rows("sec_tickers")}
    assert cached["AAPL"] == sim_cik("AAPL") and "BRK-B" in cached


def test_incremental_fetch_keeps_only_facts_filed_since_the_start(sim_url: str, sim, database: str) -> None:
    recent = FUNDAMENTALS.validate(facts(sim_url, start=date(2023, 1, 1))).valid
    assert recent and all(r["filed"] >= "2023-01-01" for r in recent)
    assert len(recent) < len(facts(sim_url))


def test_unknown_ticker_is_permanent_and_names_it(sim_url: str, sim, database: str) -> None:
    with pytest.raises(PermanentError, match="no CIK for ZZZZ in SEC's company_tickers.json"):
        facts(sim_url, ("AAPL", "ZZZZ"))


def test_an_undeclared_user_agent_is_refused_with_sec_s_page(sim_url: str, sim, database: str) -> None:
    with pytest.raises(PermanentError, match="Undeclared Automated Tool.*user_agent"):
        facts(sim_url, user_agent="python-requests/2.32")
    assert validate_settings(ProviderSettings(name="sec")) and not validate_settings(
        ProviderSettings(name="sec", user_agent=UA))


def test_rate_threshold_page_is_transient_for_ten_minutes() -> None:
    response = requests.Response()
    response.status_code = 403
    response._content = (b"<html><head><title>SEC.gov | Request Rate Threshold Exceeded</title></head><body>"
                         b"Your request rate has exceeded the threshold</body></html>")
    with pytest.raises(TransientError, match="Request Rate Threshold Exceeded") as caught:
        check_response(response, None)
    assert caught.value.retry_after == 600.0
