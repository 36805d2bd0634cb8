from __future__ import annotations

from datetime import date

import pytest
import requests

from stockpulse.errors import PermanentError, TransientError
from stockpulse.sim.data import trading_days
from tests.providers.helpers import fetch

START, END = date(2023, 1, 2), date(2023, 12, 29)


def test_aggregates_follow_next_url_with_the_key_in_the_header(sim_url: str, sim) -> None:
    records, client = fetch("polygon", sim_url, ("AAPL",), START, END)
    assert len(records) == len(trading_days(START, END))
    assert records[0]["ts"] == "2023-01-02T00:00:00+00:00"  # ms at New York midnight -> session date
    assert records[0]["source"] == "polygon"


def test_next_url_pages_carry_no_api_key_and_are_followed(sim_url: str, sim) -> None:
    body = requests.get(f"{sim_url}/v2/aggs/ticker/AAPL/range/1/day/2023-01-02/2023-01-31",
                        params={"limit": 5, "apiKey": "k"}, timeout=5).json()
    assert body["resultsCount"] == 5 and "next_url" in body
    assert "apiKey" not in body["next_url"] and "cursor=" in body["next_url"]
    assert body["results"][0]["t"] == 1672635600000  # 2023-01-02T05:00Z, New York midnight


def test_empty_result_has_no_results_key(sim_url: str, sim) -> None:
    body = requests.get(f"{sim_url}/v2/aggs/ticker/ZZZZ/range/1/day/2023-01-02/2023-01-31",
                        headers={"Authorization": "Bearer k"}, timeout=5).json()
    assert "results" not in body and body["resultsCount"] == 0 and body["status"] == "OK"
    records, _ = fetch("polygon", sim_url, ("ZZZZ",), START, END)
    assert records == []


def test_missing_key_is_permanent_with_polygon_message(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="API Key was not provided"):
        fetch("polygon", sim_url, ("AAPL",), START, END, api_key="")


def test_rate_limit_is_transient(sim_url: str, sim) -> None:
    sim.fault("polygon", "429")
    with pytest.raises(TransientError, match="exceeded the maximum requests per minute"):
        fetch("polygon", sim_url, ("AAPL",), START, END)


def test_plan_restriction_is_permanent_with_the_message_key(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="You are not entitled to this data"):
        fetch("polygon", sim_url, ("AAPL",), START, END, interval="1m")


def test_news_pages_through_next_url_and_matches_the_same_story_elsewhere(sim_url: str, sim) -> None:
    from stockpulse.datatypes.news import NEWS

    start, end = date(2024, 1, 1), date(2024, 1, 5)
    records, client = fetch("polygon", sim_url, ("AAPL",), start, end, data_type="news",
                            options={"news_page_limit": 3})
    assert len(records) == 10 and client.requests_made == 4  # 3 + 3 + 3 + 1
    result = NEWS.validate(records)
    assert result.rejected == []
    first = result.valid[0]
    assert first["url"].startswith("https://NEWS.Example.com/") and "utm_source" in first["url"]
    assert first["canonical_url"].startswith("https://news.example.com/aapl/2024/01/01/")
    assert first["symbols"][0]["sentiment_label"] in {"positive", "negative", "neutral"}
    assert first["publisher"] and first["author"]
    finnhub, _ = fetch("finnhub", sim_url, ("AAPL",), start, end, data_type="news")
    assert {r["canonical_url"] for r in result.valid} == {r["canonical_url"] for r in NEWS.validate(finnhub).valid}


def test_news_next_url_carries_no_api_key(sim_url: str, sim) -> None:
    body = requests.get(f"{sim_url}/v2/reference/news", params={"ticker": "AAPL", "limit": 2, "apiKey": "k",
                                                                 "published_utc.gte": "2024-01-01"}, timeout=5).json()
    assert body["status"] == "OK" and body["count"] == 2 and "apiKey" not in body["next_url"]


def test_news_errors_are_polygon_s(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="API Key was not provided"):
        fetch("polygon", sim_url, ("AAPL",), date(2024, 1, 1), date(2024, 1, 5), data_type="news", api_key="")
    sim.fault("polygon", "429")
    with pytest.raises(TransientError, match="exceeded the maximum requests per minute"):
        fetch("polygon", sim_url, ("AAPL",), date(2024, 1, 1), date(2024, 1, 5), data_type="news")
