"""Alpha Vantage (https://www.alphavantage.co/documentation/).

``GET /query?function=TIME_SERIES_DAILY&symbol=IBM&outputsize=compact&apikey=KEY``. Every number is a
string, the series is an object keyed by date (US/Eastern session dates), and ``compact`` is the last 100
points (``full`` is premium). Errors come with HTTP 200: ``Error Message`` (bad symbol or call:
permanent), ``Note`` / ``Information`` (throttles: transient, except plan restrictions and the demo key).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import requests

from stockpulse.errors import PermanentError, TransientError
from stockpulse.providers.base import MISSING, NEW_YORK, Fetcher, ProviderSpec, Query, bar_record, log, number

SERIES_KEY = "Time Series (Daily)"


def check_response(response: requests.Response, body: Any) -> None:
    if not isinstance(body, dict):
        return
    if "Error Message" in body:
        raise PermanentError(f"alphavantage: {body['Error Message']}", provider="alphavantage")
    for key in ("Information", "Note"):
        if key in body and len(body) <= 2:
            raise classify_soft_error(str(body[key]))


def classify_soft_error(text: str) -> Exception:
    """Alpha Vantage's HTTP-200 soft errors, by their wording. Throttle messages also advertise premium plans,
    so throttling is recognised first; a plan restriction names a premium *feature* or *endpoint*."""
    lowered = text.lower()
    burst = any(w in lowered for w in ("per second", "sparingly", "per minute", "call frequency"))
    if "per day" in lowered and "rate limit" in lowered and not burst:
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        return TransientError(f"alphavantage: daily quota reached: {text}",
                              retry_after=(midnight - now).total_seconds(), provider="alphavantage")
    if burst or "rate limit" in lowered:
        return TransientError(f"alphavantage: throttled: {text}", retry_after=60.0 if "minute" in lowered else 2.0,
                              provider="alphavantage")
    if "premium feature" in lowered or "premium endpoint" in lowered:
        return PermanentError(f"alphavantage: plan restriction: {text}", provider="alphavantage")
    if "demo" in lowered or "api key" in lowered:
        return PermanentError(f"alphavantage: {text}", provider="alphavantage")
    return TransientError(f"alphavantage: {text}", provider="alphavantage")


class AlphaVantageDailyBarsFetcher(Fetcher):
    data_type = "bars"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        if query.interval != "1d":
            raise PermanentError("alphavantage: only daily bars (TIME_SERIES_DAILY) are supported",
                                 provider="alphavantage")
        pages = []
        for symbol in query.symbols:
            body = self.client.get_json("/query", params={
                "function": "TIME_SERIES_DAILY", "symbol": symbol,
                "outputsize": self.settings.options.get("outputsize", "compact"),
                "datatype": "json", "apikey": self.settings.api_key,
            })
            if not isinstance(body, dict) or SERIES_KEY not in body:
                keys = ", ".join(list(body)[:5]) if isinstance(body, dict) else type(body).__name__
                raise PermanentError(f"alphavantage: no '{SERIES_KEY}' in the response for {symbol} "
                                     f"(got: {keys})", provider="alphavantage")
            pages.append({"symbol": symbol, "body": body})
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        for page in pages:
            body = page["body"]
            symbol = (body.get("Meta Data") or {}).get("2. Symbol") or page["symbol"]
            for day, row in (body.get(SERIES_KEY) or {}).items():
                try:
                    session = date.fromisoformat(day)
                except ValueError:
                    ts: Any = day
                else:
                    if not query.start <= session <= query.end:
                        continue
                    ts = datetime(session.year, session.month, session.day, tzinfo=UTC).isoformat()
                if not isinstance(row, dict):
                    yield {"symbol": symbol, "ts": ts, "_raw": row}
                    continue
                yield bar_record(symbol, "1d", ts,
                                 number(row.get("1. open", MISSING)), number(row.get("2. high", MISSING)),
                                 number(row.get("3. low", MISSING)), number(row.get("4. close", MISSING)),
                                 number(row.get("5. volume", MISSING)), "alphavantage")


NEWS_TIME = "%Y%m%dT%H%M%S"


def news_time_iso(value: Any) -> Any:
    """``20240605T110517`` (US/Eastern, no zone on the wire) -> ISO 8601 with the Eastern offset."""
    if not isinstance(value, str):
        return value
    for fmt in (NEWS_TIME, "%Y%m%dT%H%M"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=NEW_YORK).isoformat()
        except ValueError:
            continue
    return value


class AlphaVantageNewsFetcher(Fetcher):
    """``function=NEWS_SENTIMENT&tickers=T&time_from=YYYYMMDDTHHMM&time_to=…&sort=EARLIEST&limit=1000``.
    ``tickers`` with several symbols means articles mentioning *all* of them, so each symbol is asked
    alone. There is no pagination: a full page (``limit`` items) is logged as possibly truncated."""

    data_type = "news"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        limit = int(self.settings.options.get("news_limit", 1000))
        pages = []
        for symbol in query.symbols:
            body = self.client.get_json("/query", params={
                "function": "NEWS_SENTIMENT", "tickers": symbol,
                "time_from": f"{query.start:%Y%m%d}T0000", "time_to": f"{query.end:%Y%m%d}T2359",
                "sort": "EARLIEST", "limit": limit, "apikey": self.settings.api_key})
            if not isinstance(body, dict) or not isinstance(body.get("feed"), list):
                keys = ", ".join(list(body)[:5]) if isinstance(body, dict) else type(body).__name__
                raise PermanentError(f"alphavantage: no 'feed' in the NEWS_SENTIMENT response for {symbol} "
                                     f"(got: {keys})", provider="alphavantage")
            if len(body["feed"]) >= limit:
                log.warning("alphavantage: %d news items for %s between %s and %s, the most one call returns; "
                            "older items may be missing (run shorter windows)", limit, symbol, query.start,
                            query.end, extra={"provider": "alphavantage"})
            pages.append({"symbol": symbol, "body": body})
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        for page in pages:
            for item in page["body"]["feed"]:
                if not isinstance(item, dict):
                    yield {"provider": "alphavantage", "_raw": item}
                    continue
                symbols = [{"symbol": t.get("ticker"), "sentiment_score": number(t.get("ticker_sentiment_score")),
                            "sentiment_label": t.get("ticker_sentiment_label"),
                            "relevance_score": number(t.get("relevance_score"))}
                           for t in item.get("ticker_sentiment") or () if isinstance(t, dict)]
                if not any(s["symbol"] == page["symbol"] for s in symbols):
                    symbols.append({"symbol": page["symbol"]})
                authors = [a for a in item.get("authors") or () if isinstance(a, str)]
                yield {
                    "provider": "alphavantage",
                    "provider_id": None,  # AV items have no id of their own
                    "url": item.get("url") or None,
                    "title": item.get("title") or None,
                    "summary": item.get("summary") or None,
                    "publisher": item.get("source") or None,
                    "author": ", ".join(authors) or None,
                    "published_at": news_time_iso(item.get("time_published")),
                    "language": None,
                    "symbols": symbols,
                }


# OVERVIEW's ratios kept as facts (concept = Alpha Vantage's key), as of its LatestQuarter.
OVERVIEW_RATIOS = {"EBITDA": "USD", "PERatio": "ratio", "PEGRatio": "ratio", "BookValue": "USD/shares",
                   "DividendPerShare": "USD/shares", "DividendYield": "ratio", "EPS": "USD/shares",
                   "RevenuePerShareTTM": "USD/shares", "ProfitMargin": "ratio", "OperatingMarginTTM": "ratio",
                   "ReturnOnAssetsTTM": "ratio", "ReturnOnEquityTTM": "ratio", "RevenueTTM": "USD",
                   "GrossProfitTTM": "USD", "DilutedEPSTTM": "USD/shares", "QuarterlyEarningsGrowthYOY": "ratio",
                   "QuarterlyRevenueGrowthYOY": "ratio", "AnalystTargetPrice": "USD", "TrailingPE": "ratio",
                   "ForwardPE": "ratio", "PriceToSalesRatioTTM": "ratio", "PriceToBookRatio": "ratio",
                   "EVToRevenue": "ratio", "EVToEBITDA": "ratio", "Beta": "ratio", "SharesOutstanding": "shares"}
NO_VALUE = {"None", "-", "", None}


class AlphaVantageOverviewFetcher(Fetcher):
    """``function=OVERVIEW&symbol=IBM``: the company profile and key ratios, every value a string (``"None"``
    or ``"-"`` when absent); an unknown symbol answers ``{}``."""

    data_type = "fundamentals"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        pages = []
        for symbol in query.symbols:
            body = self.client.get_json("/query", params={"function": "OVERVIEW", "symbol": symbol,
                                                          "apikey": self.settings.api_key})
            if not isinstance(body, dict):
                raise PermanentError(f"alphavantage: OVERVIEW for {symbol} is not an object", provider="alphavantage")
            pages.append({"symbol": symbol, "body": body})
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        today = datetime.now(UTC).date().isoformat()
        for page in pages:
            symbol = page["symbol"]
            given = {k: v for k, v in page["body"].items() if v not in NO_VALUE}
            profile = {"kind": "profile", "symbol": symbol, "source": "alphavantage",
                       "exchange": given.get("Exchange"), "currency": given.get("Currency"),
                       "country": given.get("Country"), "sector": given.get("Sector"),
                       "industry": given.get("Industry"), "cik": given.get("CIK"),
                       "market_cap": number(given.get("MarketCapitalization")),
                       "shares_outstanding": number(given.get("SharesOutstanding")),
                       "website": given.get("OfficialSite"), "description": given.get("Description"),
                       "fiscal_year_end": given.get("FiscalYearEnd"), "as_of": given.get("LatestQuarter")}
            if "Name" in given:  # absent for an unknown symbol ({}): validation says so
                profile["name"] = given["Name"]
            yield profile
            as_of = given.get("LatestQuarter")
            for key, unit in OVERVIEW_RATIOS.items():
                if as_of and key in given:
                    yield {"kind": "fact", "symbol": symbol, "source": "alphavantage", "concept": key, "unit": unit,
                           "period_end": as_of, "filed": today, "value": number(given[key])}


PROVIDER = ProviderSpec(
    name="alphavantage",
    default_base_url="https://www.alphavantage.co",
    fetchers={"bars": AlphaVantageDailyBarsFetcher, "news": AlphaVantageNewsFetcher,
              "fundamentals": AlphaVantageOverviewFetcher},
    required_secrets=("api_key",),
    default_rate_limit="25/day",  # free key: 25 requests per day, about 1 per second burst
    check_response=check_response,
    description="Alpha Vantage TIME_SERIES_DAILY (compact on free keys), NEWS_SENTIMENT and OVERVIEW",
)
