"""Polygon.io (Massive) aggregates v2 (https://polygon.io/docs/stocks/get_v2_aggs_ticker__stocksticker__range__multiplier___timespan___from___to).

``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``. ``t`` is the window start in
milliseconds (daily bars at midnight New York). An empty result has no ``results`` key at all. ``next_url``
pages do not carry the API key, so the key travels in the ``Authorization: Bearer`` header, as the official
client does, and ``next_url`` is followed as path + query on our own base URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests

from stockpulse.errors import PermanentError
from stockpulse.providers.base import (
    MISSING,
    Fetcher,
    ProviderSpec,
    Query,
    compact_bar_record,
    daily_from_epoch,
    intraday_ts,
)

RANGES = {"1m": (1, "minute"), "5m": (5, "minute"), "15m": (15, "minute"), "1h": (1, "hour"), "1d": (1, "day")}
MAX_PAGES = 1_000


def check_response(response: requests.Response, body: Any) -> None:
    # Errors carry {"status": "ERROR", "error": ...} or {"status": "NOT_AUTHORIZED", "message": ...}.
    if response.status_code < 400 and isinstance(body, dict) and body.get("status") in {"ERROR", "NOT_AUTHORIZED"}:
        raise PermanentError(f"polygon: {body.get('error') or body.get('message') or body['status']}",
                             provider="polygon")


def follow_next_url(client: Any, path: str, params: dict[str, Any], headers: dict[str, str],
                    what: str) -> Iterator[dict[str, Any]]:
    """Every page of a Polygon listing: ``next_url`` (no API key in it) as path + query on our base URL."""
    query: dict[str, Any] | None = params
    for _ in range(MAX_PAGES):
        body = client.get_json(path, params=query, headers=headers)
        if not isinstance(body, dict):
            raise PermanentError(f"polygon: unexpected payload for {what}", provider="polygon")
        yield body
        next_url = body.get("next_url")
        if not next_url:
            return
        parts = urlsplit(next_url)
        path, query = f"{parts.path}?{parts.query}" if parts.query else parts.path, None
    raise PermanentError(f"polygon: more than {MAX_PAGES} pages of {what}; narrow the range", provider="polygon")


class PolygonBarsFetcher(Fetcher):
    data_type = "bars"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        multiplier, timespan = RANGES[query.interval]
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        pages = []
        for symbol in query.symbols:
            path = (f"/v2/aggs/ticker/{symbol}/range/{multiplier}/{timespan}/"
                    f"{query.start.isoformat()}/{query.end.isoformat()}")
            params = {"adjusted": str(self.settings.options.get("adjusted", True)).lower(), "sort": "asc",
                      "limit": 50000}
            pages += [{"symbol": symbol, "body": body}
                      for body in follow_next_url(self.client, path, params, headers, f"aggregates for {symbol}")]
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        daily = query.interval == "1d"
        for page in pages:
            body = page["body"]
            symbol = body.get("ticker") or page["symbol"]
            for row in body.get("results") or ():  # absent when nothing matched
                t = row.get("t", MISSING) if isinstance(row, dict) else MISSING
                yield compact_bar_record(symbol, query.interval, row,
                                         daily_from_epoch(t, unit="ms") if daily else intraday_ts(t, unit="ms"),
                                         "polygon")


class PolygonNewsFetcher(Fetcher):
    """``GET /v2/reference/news?ticker=T&published_utc.gte=…&published_utc.lte=…&order=asc&limit=1000``;
    ``next_url`` pages as for aggregates. ``insights`` (newer items) carry per-ticker sentiment."""

    data_type = "news"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        pages = []
        for symbol in query.symbols:
            params = {"ticker": symbol, "published_utc.gte": f"{query.start.isoformat()}T00:00:00Z",
                      "published_utc.lte": f"{query.end.isoformat()}T23:59:59Z", "order": "asc",
                      "sort": "published_utc", "limit": int(self.settings.options.get("news_page_limit", 1000))}
            pages += [{"symbol": symbol, "body": body} for body in
                      follow_next_url(self.client, "/v2/reference/news", params, headers, f"news for {symbol}")]
        return pages

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        for page in pages:
            for item in page["body"].get("results") or ():
                if not isinstance(item, dict):
                    yield {"provider": "polygon", "_raw": item}
                    continue
                insights = {i.get("ticker"): i for i in item.get("insights") or () if isinstance(i, dict)}
                tickers = [t for t in item.get("tickers") or () if isinstance(t, str)] or [page["symbol"]]
                publisher = item.get("publisher") if isinstance(item.get("publisher"), dict) else {}
                yield {
                    "provider": "polygon",
                    "provider_id": item.get("id"),
                    "url": item.get("article_url") or None,
                    "title": item.get("title") or None,
                    "summary": item.get("description") or None,
                    "publisher": publisher.get("name"),
                    "author": item.get("author") or None,
                    "published_at": item.get("published_utc"),
                    "language": None,
                    "symbols": [{"symbol": t, "sentiment_label": (insights.get(t) or {}).get("sentiment")}
                                for t in tickers],
                }


PROVIDER = ProviderSpec(
    name="polygon",
    default_base_url="https://api.polygon.io",
    fetchers={"bars": PolygonBarsFetcher, "news": PolygonNewsFetcher},
    required_secrets=("api_key",),
    default_rate_limit="5/minute",  # free plan
    check_response=check_response,
    description="Polygon.io / Massive aggregates and ticker news",
)
