from __future__ import annotations

from datetime import date

import pytest
import requests

from stockpulse.datatypes.news import NEWS, canonical_url
from stockpulse.errors import PermanentError, TransientError
from tests.providers.helpers import fetch

START, END = date(2024, 1, 1), date(2024, 1, 3)


def news(sim_url: str, symbols: tuple[str, ...] = ("AAPL",), **settings: object) -> list[dict]:
    records, _ = fetch("finnhub", sim_url, symbols, START, END, data_type="news", **settings)
    return records


def test_company_news_is_a_bare_array_newest_first_in_epoch_seconds(sim_url: str, sim) -> None:
    body = requests.get(f"{sim_url}/api/v1/company-news", params={"symbol": "AAPL", "from": "2024-01-01",
                                                                   "to": "2024-01-03"},
                        headers={"X-Finnhub-Token": "k"}, timeout=5).json()
    assert isinstance(body, list) and len(body) == 6
    assert body[0]["datetime"] > body[-1]["datetime"] and isinstance(body[0]["datetime"], int)
    assert set(body[0]) == {"category", "datetime", "headline", "id", "image", "related", "source", "summary", "url"}


def test_records_validate_with_the_symbol_and_utc_time(sim_url: str, sim) -> None:
    records = news(sim_url, ("AAPL", "MSFT"))
    assert len(records) == 12
    result = NEWS.validate(records)
    assert result.rejected == [] and len(result.valid) == 12
    first = result.valid[0]
    assert first["provider"] == "finnhub" and first["symbols"] == [
        {"symbol": first["symbols"][0]["symbol"], "sentiment_score": None, "sentiment_label": None,
         "relevance_score": None}]
    assert first["published_at"].tzinfo is not None and first["canonical_url"] == canonical_url(first["url"])
    assert {r["symbols"][0]["symbol"] for r in result.valid} == {"AAPL", "MSFT"}


def test_unknown_symbol_is_an_empty_array(sim_url: str, sim) -> None:
    assert news(sim_url, ("ZZZZ",)) == []


def test_missing_key_is_permanent_with_finnhub_message(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="Please use an API key"):
        news(sim_url, api_key="")


def test_rate_limit_and_server_errors_are_transient(sim_url: str, sim) -> None:
    sim.fault("finnhub", "429")
    with pytest.raises(TransientError, match="API limit reached"):
        news(sim_url)
    sim.fault("finnhub", "503")
    with pytest.raises(TransientError, match="HTTP 503"):
        news(sim_url)


def test_a_body_that_is_not_json_is_permanent(sim_url: str, sim) -> None:
    sim.fault("finnhub", "malformed")
    with pytest.raises(PermanentError, match="not valid JSON"):
        news(sim_url)


def test_profile_in_units_not_millions_and_metrics_as_facts(sim_url: str, sim) -> None:
    from stockpulse.datatypes.fundamentals import FUNDAMENTALS
    from stockpulse.sim.data import company_profile

    records, client = fetch("finnhub", sim_url, ("AAPL", "ZZZZ"), START, END, data_type="fundamentals")
    assert client.requests_made == 4  # profile2 and metric per symbol
    result = FUNDAMENTALS.validate(records)
    profile = next(r for r in result.valid if r["kind"] == "profile")
    expected = company_profile(7, "AAPL")  # the test simulator's seed
    assert profile["market_cap"] == pytest.approx(expected["market_cap"])
    assert profile["shares_outstanding"] == pytest.approx(expected["shares"])
    facts = {(r["concept"], r["fiscal_period"]): r for r in result.valid if r["kind"] == "fact"}
    assert ("peTTM", None) in facts and ("totalDebt/totalEquityQuarterly", None) in facts
    assert ("annual:eps", "FY") in facts and ("quarterly:eps", "Q") in facts
    assert not any(c == "dividendYieldIndicatedAnnual" for c, _ in facts)  # null values are not facts
    # An unknown symbol's profile is {}: quarantined with the reason, not silently skipped.
    [rejected] = result.rejected
    assert rejected.record["symbol"] == "ZZZZ" and "empty profile" in rejected.reason
