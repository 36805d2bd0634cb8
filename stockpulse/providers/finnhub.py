"""Finnhub (https://finnhub.io/docs/api).

``GET /api/v1/company-news?symbol=AAPL&from=YYYY-MM-DD&to=YYYY-MM-DD`` answers a bare JSON array, newest
first, ``datetime`` in UNIX seconds, ``related`` the symbol; ``[]`` when there is nothing. The key travels
as the ``X-Finnhub-Token`` header (the docs accept it there or as ``?token=``; a header keeps it out of
URLs). Errors are ``{"error": "..."}`` with 401 (key), 403 (plan), 429 (limit: 60 calls/minute on the free
plan, 30/second on every plan).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from stockpulse.errors import PermanentError
from stockpulse.providers.base import Fetcher, ProviderSpec, Query


def epoch_seconds_iso(value: Any) -> Any:
    """UNIX seconds -> ISO 8601 UTC; anything else unchanged, for validation to reject with a reason."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return value
    return datetime.fromtimestamp(value, UTC).isoformat()


class FinnhubNewsFetcher(Fetcher):
    data_type = "news"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        pages = []
        for symbol in query.symbols:
            body = self.client.get_json("/api/v1/company-news", params={
                "symbol": symbol, "from": query.start.isoformat(), "to": query.end.isoformat()},
                headers={"X-Finnhub-Token": self.settings.api_key or ""})
            if not isinstance(body, list):
                raise PermanentError(f"finnhub: company-news for {symbol} is not a JSON array", provider="finnhub")
            pages.append({"symbol": symbol, "items": body})
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        for page in pages:
            for item in page["items"]:
                if not isinstance(item, dict):
                    yield {"provider": "finnhub", "_raw": item}
                    continue
                related = [s.strip() for s in str(item.get("related") or page["symbol"]).split(",") if s.strip()]
                source = item.get("source")
                yield {
                    "provider": "finnhub",
                    "provider_id": str(item["id"]) if item.get("id") is not None else None,
                    "url": item.get("url") or None,
                    "title": item.get("headline") or None,
                    "summary": item.get("summary") or None,
                    # ``source`` is a name ("Yahoo") or a site URL; either way it is the publisher.
                    "publisher": source or None,
                    "author": None,
                    "published_at": epoch_seconds_iso(item.get("datetime")),
                    "language": None,
                    "symbols": [{"symbol": s} for s in related],
                }


class FinnhubFundamentalsFetcher(Fetcher):
    """``/stock/profile2?symbol=`` (``marketCapitalization`` and ``shareOutstanding`` in millions; an
    unknown symbol or an ETF answers ``{}``) and ``/stock/metric?symbol=&metric=all`` (a flat ``metric`` map
    of current values, as of today, and ``series.annual|quarterly.<metric>: [{period, v}]``, kept as
    concepts ``annual:<metric>`` and ``quarterly:<metric>``)."""

    data_type = "fundamentals"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        headers = {"X-Finnhub-Token": self.settings.api_key or ""}
        pages = []
        for symbol in query.symbols:
            profile = self.client.get_json("/api/v1/stock/profile2", params={"symbol": symbol}, headers=headers)
            metric = self.client.get_json("/api/v1/stock/metric", params={"symbol": symbol, "metric": "all"},
                                          headers=headers)
            if not isinstance(profile, dict) or not isinstance(metric, dict):
                raise PermanentError(f"finnhub: profile2/metric for {symbol} is not an object", provider="finnhub")
            pages.append({"symbol": symbol, "profile": profile, "metric": metric})
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        today = datetime.now(UTC).date().isoformat()
        for page in pages:
            p, symbol = page["profile"], page["symbol"]
            yield {"kind": "profile", "symbol": symbol, "source": "finnhub",
                   **({"name": p["name"]} if p.get("name") else {}), "exchange": p.get("exchange"),
                   "currency": p.get("currency"), "country": p.get("country"), "industry": p.get("finnhubIndustry"),
                   "market_cap": _millions(p.get("marketCapitalization")),
                   "shares_outstanding": _millions(p.get("shareOutstanding")), "ipo_date": p.get("ipo") or None,
                   "website": p.get("weburl") or None}
            for key, value in (page["metric"].get("metric") or {}).items():
                if value is not None:
                    yield {"kind": "fact", "symbol": symbol, "source": "finnhub", "concept": key,
                           "period_end": today, "filed": today, "value": value}
            for span, fiscal in (("annual", "FY"), ("quarterly", "Q")):
                for key, points in ((page["metric"].get("series") or {}).get(span) or {}).items():
                    for point in points or ():
                        if isinstance(point, dict) and point.get("v") is not None:
                            # Annual and quarterly series share names and only give the period's end.
                            yield {"kind": "fact", "symbol": symbol, "source": "finnhub", "concept": f"{span}:{key}",
                                   "period_end": point.get("period"), "fiscal_period": fiscal, "filed": today,
                                   "value": point["v"]}


def _millions(value: Any) -> Any:
    """Finnhub reports market capitalisation and shares outstanding in millions."""
    return value * 1e6 if isinstance(value, int | float) and not isinstance(value, bool) else value


def check_response(response: Any, body: Any) -> None:
    # 200 with {"error": ...} is not documented, but a body that is only an error is never data.
    if response.status_code < 400 and isinstance(body, dict) and body and set(body) == {"error"}:
        raise PermanentError(f"finnhub: {body['error']}", provider="finnhub")


PROVIDER = ProviderSpec(
    name="finnhub",
    default_base_url="https://finnhub.io",
    fetchers={"news": FinnhubNewsFetcher, "fundamentals": FinnhubFundamentalsFetcher},
    required_secrets=("api_key",),
    default_rate_limit="60/minute",  # free plan (and 30/second on every plan)
    check_response=check_response,
    description="Finnhub company news, profiles and basic financials",
)
