from __future__ import annotations

from datetime import date, timedelta

import pytest
import requests

from stockpulse.errors import PermanentError, TransientError
from stockpulse.providers.alphavantage import classify_soft_error
from tests.providers.helpers import fetch


def test_compact_daily_series_strings_become_numbers(sim_url: str, sim) -> None:
    end = date.today()
    records, _ = fetch("alphavantage", sim_url, ("IBM",), end - timedelta(days=400), end)
    assert 0 < len(records) <= 100  # compact: the last 100 sessions
    record = records[0]
    assert isinstance(record["open"], float) and isinstance(record["volume"], float)
    assert record["ts"].endswith("T00:00:00+00:00") and record["source"] == "alphavantage"


def test_range_filter_applies_to_compact_output(sim_url: str, sim) -> None:
    end = date.today() - timedelta(days=1)
    records, _ = fetch("alphavantage", sim_url, ("IBM",), end - timedelta(days=6), end)
    assert 1 <= len(records) <= 5


def test_full_output_on_a_free_key_is_a_permanent_premium_error(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="premium feature"):
        fetch("alphavantage", sim_url, ("IBM",), date(2020, 1, 1), date.today(), options={"outputsize": "full"})


def test_bad_symbol_is_an_http_200_error_message(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="Invalid API call"):
        fetch("alphavantage", sim_url, ("ZZZZ",), date(2024, 1, 1), date.today())


def test_burst_throttle_is_transient(sim_url: str, sim) -> None:
    sim.fault("alphavantage", "429")
    with pytest.raises(TransientError, match="throttled"):
        fetch("alphavantage", sim_url, ("IBM",), date(2024, 1, 1), date.today())


@pytest.mark.parametrize(("text", "kind"), [
    ("Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute and 500 calls per "
     "day. Please visit https://www.alphavantage.co/premium/ if you would like to target a higher API call "
     "frequency.", TransientError),
    ("Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day. Please subscribe to "
     "any of the premium plans at https://www.alphavantage.co/premium/ to instantly remove all daily rate limits.",
     TransientError),
    ("Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any of the premium "
     "plans at https://www.alphavantage.co/premium/ to instantly unlock all premium endpoints", PermanentError),
    ("The **demo** API key is for demo purposes only. Please claim your free API key at "
     "(https://www.alphavantage.co/support/#api-key) to explore our full API offerings.", PermanentError),
])
def test_soft_error_classification(text: str, kind: type) -> None:
    assert isinstance(classify_soft_error(text), kind)


def test_daily_quota_retry_after_points_to_the_next_day() -> None:
    error = classify_soft_error("Our standard API rate limit is 25 requests per day.")
    assert isinstance(error, TransientError) and 0 < error.retry_after <= 86400


def test_news_sentiment_per_ticker_with_eastern_times_and_string_scores(sim_url: str, sim) -> None:
    from stockpulse.datatypes.news import NEWS

    start, end = date(2024, 7, 1), date(2024, 7, 2)
    records, client = fetch("alphavantage", sim_url, ("AAPL", "MSFT"), start, end, data_type="news")
    assert client.requests_made == 2  # one ticker per call: several tickers mean "mentions all of them"
    body = requests.get(f"{sim_url}/query", params={"function": "NEWS_SENTIMENT", "tickers": "AAPL",
                                                     "time_from": "20240701T0000", "time_to": "20240702T2359",
                                                     "apikey": "k"}, timeout=5).json()
    assert isinstance(body["items"], str) and isinstance(body["feed"][0]["ticker_sentiment"][0]["relevance_score"], str)
    result = NEWS.validate(records)
    assert result.rejected == [] and len(result.valid) == 8
    article = next(a for a in result.valid if a["symbols"][0]["symbol"] == "AAPL")
    link = article["symbols"][0]
    assert isinstance(link["sentiment_score"], float) and isinstance(link["relevance_score"], float)
    assert link["sentiment_label"] in {"Bearish", "Somewhat-Bearish", "Neutral", "Somewhat-Bullish", "Bullish"}
    # time_published is New York time without a zone: 13:xx UTC in July is 09:xx EDT.
    raw = next(i for i in body["feed"] if i["url"].startswith(article["canonical_url"]))
    assert raw["time_published"][9:11] == f"{article['published_at'].hour - 4:02d}"
    assert "utm_campaign" in article["url"] and "utm_campaign" not in article["canonical_url"]


def test_overview_profile_and_ratios_skip_none_and_dash(sim_url: str, sim) -> None:
    from stockpulse.datatypes.fundamentals import FUNDAMENTALS

    records, _ = fetch("alphavantage", sim_url, ("IBM", "ZZZZ"), date(2024, 1, 1), date(2024, 1, 2),
                       data_type="fundamentals")
    result = FUNDAMENTALS.validate(records)
    profile = next(r for r in result.valid if r["kind"] == "profile")
    assert profile["name"] and profile["fiscal_year_end"] == "December" and profile["market_cap"] > 0
    concepts = {r["concept"] for r in result.valid if r["kind"] == "fact"}
    assert {"PERatio", "EPS", "Beta", "SharesOutstanding"} <= concepts
    assert not concepts & {"EBITDA", "PEGRatio", "DividendYield"}  # "None" and "-" are no value
    assert all(r["period_end"] == profile["as_of"] for r in result.valid if r["kind"] == "fact")
    [rejected] = result.rejected
    assert rejected.record["symbol"] == "ZZZZ" and "empty profile" in rejected.reason


def test_news_and_overview_get_alpha_vantage_s_http_200_errors(sim_url: str, sim) -> None:
    for data_type in ("news", "fundamentals"):
        sim.fault("alphavantage", "429")  # {"Information": "... 1 request per second ..."} with HTTP 200
        with pytest.raises(TransientError, match="throttled"):
            fetch("alphavantage", sim_url, ("IBM",), date(2024, 1, 1), date(2024, 1, 2), data_type=data_type)
        with pytest.raises(PermanentError, match="apikey is invalid or missing"):
            fetch("alphavantage", sim_url, ("IBM",), date(2024, 1, 1), date(2024, 1, 2), data_type=data_type,
                  api_key="")
