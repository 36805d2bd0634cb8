"""Finnhub (https://finnhub.io/docs/api).

``GET /api/v1/company-news?symbol=AAPL&from=YYYY-MM-DD&to=YYYY-MM-DD`` answers a bare JSON array, newest
first, ``datetime`` in UNIX seconds, ``related`` the symbol; ``[]`` when there is nothing. The key travels
as the ``X-Finnhub-Token`` header (the docs accept it there or as ``?token=``; a header keeps it out of
URLs). Errors are ``{"error": "..."}`` with 401 (key), 403 (plan), 429 (limit: 60 calls/minute on the free
plan, 30/second on every plan).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from stockpulse.errors import PermanentError
from stockpulse.providers.base import Fetcher, ProviderSpec, Query, StreamFrame, TradeStream, decode_frame


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


class FinnhubTradeStream(TradeStream):
    """``wss://ws.finnhub.io?token=KEY`` (the token only travels in the URL); one ``{"type":"subscribe",
    "symbol":S}`` per symbol; frames ``{"data":[{"c","p","s","t","v"}],"type":"trade"}`` (``t`` in ms, ``c``
    condition codes as strings, often null or missing for crypto), ``{"type":"ping"}`` (ignored: no reply is
    documented) and ``{"msg":...,"type":"error"}``. A bad key is refused at the handshake (HTTP 401).
    Finnhub sends no trade id: it is derived from the trade (time, price, size, and its rank among
    identical trades in the frame), so a replayed frame loads nothing twice."""

    def url(self) -> str:
        base = str(self.settings.options.get("ws_url", "wss://ws.finnhub.io"))
        return f"{base}{'&' if '?' in base else '?'}token={self.settings.api_key or ''}"

    def subscribe(self, symbols: tuple[str, ...]) -> list[str]:
        return [json.dumps({"type": "subscribe", "symbol": s}) for s in symbols]

    def unsubscribe(self, symbols: tuple[str, ...]) -> list[str]:
        return [json.dumps({"type": "unsubscribe", "symbol": s}) for s in symbols]

    def parse(self, text: str) -> StreamFrame:
        message, bad = decode_frame(text, dict)
        if bad:
            return bad
        kind = message.get("type")
        if kind == "ping":
            return StreamFrame()
        if kind == "error":
            return StreamFrame(error=PermanentError(f"finnhub stream: {message.get('msg')}", provider="finnhub"))
        if kind != "trade" or not isinstance(message.get("data"), list):
            return StreamFrame(malformed=f"unexpected frame type {kind!r}")
        records, seen = [], Counter()
        for trade in message["data"]:
            if not isinstance(trade, dict):
                records.append({"source": "finnhub", "_raw": trade})
                continue
            t, p, v = trade.get("t"), trade.get("p"), trade.get("v")
            conditions = trade.get("c")
            identity = (trade.get("s"), t, p, v, tuple(conditions) if isinstance(conditions, list) else conditions)
            seen[identity] += 1
            records.append({
                "source": "finnhub", "symbol": trade.get("s"), "ts": epoch_ms_iso(t),
                "trade_id": f"{t}-{p}-{v}-{seen[identity]}", "price": p, "size": v,
                "conditions": ",".join(map(str, conditions)) if isinstance(conditions, list) and conditions else None,
                "exchange": None,
            })
        return StreamFrame(records=records)


def epoch_ms_iso(value: Any) -> Any:
    """UNIX milliseconds -> ISO 8601 UTC with microseconds; anything else unchanged for validation."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return value
    return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="microseconds")


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
    streams={"trades": FinnhubTradeStream},
    required_secrets=("api_key",),
    default_rate_limit="60/minute",  # free plan (and 30/second on every plan)
    check_response=check_response,
    description="Finnhub company news, profiles, basic financials and the trades websocket",
)
