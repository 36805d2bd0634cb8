"""The simulator's HTTP server: every supported provider on one loopback port (their paths do not overlap).

Faults on demand:
- per request: header ``X-Sim-Fault: KIND`` or query parameter ``sim_fault=KIND``;
- per provider from config: ``sim.faults.<provider>: {rate: 0.3, kinds: [429, 503, timeout]}``;
- queued at runtime: ``POST /_sim/faults {"provider": "alpaca", "kind": "503", "times": 2}``;
- a rate at runtime: ``POST /_sim/fault-rate {"provider": "polygon", "rate": 0.3, "kinds": ["503", "429"]}``.
KIND is one of 429, 500, 502, 503, slow, timeout, drop, malformed, html, empty, huge, soft.
Bad records on demand: ``POST /_sim/corrupt {"provider": "*", "symbol": "AAPL", "date": "2024-01-05",
"kind": "negative_volume|high_below_low|nan|missing_field|naive_ts|duplicate"}``.
Feeds on demand: ``POST /_sim/feeds {"path": "/feeds/odd.xml", "body": "<rss>...</rss>"}`` serves that body
(provider ``rss``) at the path, for feeds with missing fields, odd dates and entities.
``GET /_sim/stats`` counts requests per provider; ``DELETE /_sim/faults`` clears faults, corruptions, feeds.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import logging
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape
from zoneinfo import ZoneInfo

import orjson

from stockpulse.sim.alpaca_stream import trade_message
from stockpulse.sim.data import (
    DailyBar,
    Story,
    TapeTrade,
    company_facts,
    company_profile,
    daily_bars,
    is_unknown,
    news_stories,
    sim_cik,
    tape_trades,
)
from stockpulse.sim.streams import StreamControl, serve_streams

log = logging.getLogger("stockpulse.sim")
NEW_YORK = ZoneInfo("America/New_York")
FAULT_KINDS = ("429", "500", "502", "503", "slow", "timeout", "drop", "malformed", "html", "empty", "huge", "soft")
# The last two are plausible-looking but wrong data for the quality checks: prices x10 for a day (a bad
# tick or a missed split) and volume x100.
CORRUPTIONS = ("negative_volume", "high_below_low", "nan", "missing_field", "naive_ts", "duplicate", "spike",
               "volume_spike")


class Reply(Exception):
    """Raised by a handler to answer with a status and a body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


class SimState:
    def __init__(self, seed: int = 42, faults: dict[str, Any] | None = None, keys: dict[str, Any] | None = None,
                 slow_s: float = 3.0, premium: bool = False, today: date | None = None):
        self.seed = seed
        self.config_faults = dict(faults or {})
        self.initial_faults = dict(faults or {})
        self.keys = keys or {}
        self.slow_s = slow_s
        self.premium = premium
        self.fixed_today = today
        self.queued: dict[str, list[str]] = {}
        self.corruptions: list[dict[str, Any]] = []
        self.feeds: dict[str, dict[str, Any]] = {}
        self.stream = StreamControl()
        self.stats: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.rng = random.Random(seed)

    @property
    def today(self) -> date:
        return self.fixed_today or datetime.now(UTC).date()

    def next_fault(self, provider: str) -> str | None:
        with self.lock:
            for name in (provider, "*"):
                queue = self.queued.get(name)
                if queue:
                    return queue.pop(0)
            conf = self.config_faults.get(provider)
            if conf and self.rng.random() < float(conf.get("rate", 0)):
                return str(self.rng.choice(conf.get("kinds") or ["503"]))
        return None

    def corruption(self, provider: str, symbol: str, day: date) -> str | None:
        for c in self.corruptions:
            if c.get("provider", "*") in ("*", provider) and c["symbol"] == symbol and c["date"] == day.isoformat():
                return c["kind"]
        return None


# --------------------------------------------------------------------------------------------------
# Provider behaviour


def _parse_day(value: str, field: str) -> date:
    try:
        if value.isdigit():  # Polygon accepts ms timestamps
            return datetime.fromtimestamp(int(value) / 1000, NEW_YORK).date()
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date() if "T" in value else date.fromisoformat(value)
    except ValueError:
        raise Reply(400, {"message": f"invalid {field}: {value!r}"}) from None


@lru_cache(maxsize=65536)
def _ny_midnight_utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=NEW_YORK).astimezone(UTC)


def _bars(state: SimState, provider: str, symbol: str, start: date, end: date) -> list[tuple[DailyBar, str | None]]:
    out = []
    for bar in daily_bars(state.seed, symbol, start, end, today=state.today):
        kind = state.corruption(provider, symbol, bar.day)
        if kind == "spike":
            bar, kind = replace(bar, open=bar.open * 10, high=bar.high * 10, low=bar.low * 10,
                                close=bar.close * 10), None
        elif kind == "volume_spike":
            bar, kind = replace(bar, volume=bar.volume * 100), None
        out.append((bar, kind))
        if kind == "duplicate":
            out.append((bar, None))
    return out


def _corrupt(values: dict[str, Any], kind: str | None, names: dict[str, str]) -> dict[str, Any]:
    """Apply a corruption to one rendered bar; ``names`` maps canonical field names to the provider's."""
    if kind == "negative_volume":
        values[names["volume"]] = -abs(values[names["volume"]]) - 1
    elif kind == "high_below_low":
        values[names["high"]], values[names["low"]] = values[names["low"]], values[names["high"]]
    elif kind == "nan":
        values[names["close"]] = "NaN"
    elif kind == "missing_field":
        values.pop(names["volume"], None)
    elif kind == "naive_ts" and "ts" in names:
        value = values[names["ts"]]
        if isinstance(value, str):
            values[names["ts"]] = value.replace("Z", "")
        elif isinstance(value, int):
            values[names["ts"]] = datetime.fromtimestamp(value / 1000, UTC).replace(tzinfo=None).isoformat()
    return values


def _alpaca_auth(state: SimState, headers: Any) -> None:
    key, secret = headers.get("APCA-API-KEY-ID"), headers.get("APCA-API-SECRET-KEY")
    expected = state.keys.get("alpaca") or {}
    if not key or not secret or (expected and (key != expected.get("api_key") or secret != expected.get("api_secret"))):
        raise Reply(403, {"message": "forbidden."})


def alpaca_trades(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    """Historical trades from the simulated tape (the same trades the stream sends): sorted by symbol, then
    time; ``start`` and ``end`` inclusive; ``limit`` across symbols; ``next_page_token`` is base64 of
    ``SYMBOL|slot`` of the last trade sent."""
    _alpaca_auth(state, headers)
    match = re.fullmatch(r"/v2/stocks/(?:(?P<one>[^/]+)/)?trades", path)
    assert match
    symbols = [match.group("one")] if match.group("one") else [s for s in query.get("symbols", "").split(",") if s]
    if not symbols:
        raise Reply(400, {"code": 40010001, "message": "symbols is required"})
    limit = int(query.get("limit", 1000))
    if not 1 <= limit <= 10000:
        raise Reply(422, {"code": 42210000, "message": "invalid limit: must be between 1 and 10000"})
    now_ns = time.time_ns()
    start, end = _parse_dt(query.get("start")), _parse_dt(query.get("end"))
    start_ns = _epoch_ns(start) if start else now_ns // 86_400_000_000_000 * 86_400_000_000_000
    end_ns = min(now_ns, _epoch_ns(end) + 1000) if end else now_ns  # end is inclusive (to the microsecond)
    after: tuple[str, int] | None = None
    if query.get("page_token"):
        try:
            sym, _, slot = base64.b64decode(query["page_token"]).decode().partition("|")
            after = (sym, int(slot))
        except Exception:
            raise Reply(400, {"code": 40010001, "message": "invalid page_token"}) from None
    items: list[TapeTrade] = []
    for symbol in sorted(set(symbols)):
        if is_unknown(symbol) or (after and symbol < after[0]):
            continue
        tape = tape_trades(symbol, start_ns, end_ns, state.stream.tape_rate)
        if after and symbol == after[0]:
            tape = [t for t in tape if t.slot > after[1]]
        items.extend(tape[: limit + 1 - len(items)])
        if len(items) > limit:
            break
    page, rest = items[:limit], items[limit:]
    out: dict[str, list] = {}
    for trade in page:
        message = trade_message(trade)
        out.setdefault(trade.symbol, []).append({k: message[k] for k in ("t", "x", "p", "s", "c", "i", "z")})
    token = base64.b64encode(f"{page[-1].symbol}|{page[-1].slot}".encode()).decode() if rest and page else None
    if match.group("one"):
        return {"trades": out.get(symbols[0], []), "symbol": symbols[0], "next_page_token": token}
    return {"trades": out, "next_page_token": token}


def _epoch_ns(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def alpaca_bars(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    _alpaca_auth(state, headers)
    match = re.fullmatch(r"/v2/stocks/(?:(?P<one>[^/]+)/)?bars", path)
    assert match
    symbols = [match.group("one")] if match.group("one") else [s for s in query.get("symbols", "").split(",") if s]
    if not symbols:
        raise Reply(400, {"code": 40010001, "message": "symbols is required"})
    if query.get("timeframe") != "1Day":
        raise Reply(422, {"code": 42210000, "message": f"invalid timeframe: {query.get('timeframe')!r} "
                                                       "(the simulator serves 1Day)"})
    limit = int(query.get("limit", 1000))
    if not 1 <= limit <= 10000:
        raise Reply(422, {"code": 42210000, "message": "invalid limit: must be between 1 and 10000"})
    start = _parse_day(query.get("start", state.today.isoformat()), "start")
    end = _parse_day(query.get("end", state.today.isoformat()), "end")
    after = None
    if query.get("page_token"):
        try:
            sym, _, ts = base64.b64decode(query["page_token"]).decode().split("|")
            after = (sym, ts[:10])
        except Exception:
            raise Reply(400, {"code": 40010001, "message": "invalid page_token"}) from None
    # Items in (symbol, time) order, starting after the token's item; one more than the page to know
    # whether another page follows.
    items: list[tuple[str, DailyBar, str | None]] = []
    for symbol in sorted(set(symbols)):
        if is_unknown(symbol) or (after and symbol < after[0]):
            continue  # Alpaca leaves symbols without data out of the object
        series = _bars(state, "alpaca", symbol, start, end)
        if after and symbol == after[0]:
            series = series[bisect.bisect_right([b.day.isoformat() for b, _ in series], after[1]):]
        items.extend((symbol, bar, kind) for bar, kind in series[: limit + 1 - len(items)])
        if len(items) > limit:
            break
    page, rest = items[:limit], items[limit:]
    out: dict[str, list] = {}
    for symbol, bar, kind in page:
        values = _alpaca_bar(bar)
        if kind:
            values = _corrupt(dict(values), kind, {"volume": "v", "high": "h", "low": "l", "close": "c", "ts": "t"})
        out.setdefault(symbol, []).append(values)
    token = None
    if rest and page:
        last = page[-1]
        token = base64.b64encode(f"{last[0]}|D|{_alpaca_ts(last[1].day)}".encode()).decode()
    if match.group("one"):
        return {"bars": out.get(symbols[0], []), "symbol": symbols[0], "next_page_token": token}
    return {"bars": out, "next_page_token": token}


@lru_cache(maxsize=1 << 20)  # rendered once per bar; corrupted bars are rendered from a copy
def _alpaca_bar(bar: DailyBar) -> dict[str, Any]:
    return {"t": _alpaca_ts(bar.day), "o": bar.open, "h": bar.high, "l": bar.low, "c": bar.close, "v": bar.volume,
            "n": max(1, bar.volume // 120), "vw": round((bar.high + bar.low + bar.close) / 3, 6)}


@lru_cache(maxsize=65536)
def _alpaca_ts(day: date) -> str:
    return _ny_midnight_utc(day).strftime("%Y-%m-%dT%H:%M:%SZ")


def polygon_aggs(state: SimState, path: str, query: dict[str, str], headers: Any, host: str) -> Any:
    request_id = _polygon_auth(state, query, headers)
    match = re.fullmatch(r"/v2/aggs/ticker/([^/]+)/range/(\d+)/(\w+)/([^/]+)/([^/]+)", path)
    if not match:
        raise Reply(404, {"status": "NOT_FOUND", "request_id": request_id, "message": "Not found"})
    ticker, multiplier, timespan, from_, to = match.groups()
    if timespan in ("second", "minute", "hour"):
        # The simulated plan is Polygon's free one: end-of-day data only.
        raise Reply(403, {"status": "NOT_AUTHORIZED", "request_id": request_id,
                          "message": "You are not entitled to this data. Please upgrade your plan at "
                                     "https://polygon.io/pricing"})
    if timespan != "day" or multiplier != "1":
        raise Reply(400, {"status": "ERROR", "request_id": request_id,
                          "error": "the simulator serves 1/day aggregates"})
    start, end = _parse_day(from_, "from"), _parse_day(to, "to")
    limit = min(int(query.get("limit", 5000)), 50000)
    cursor = query.get("cursor")
    if cursor:
        try:
            params = parse_qs(base64.urlsafe_b64decode(cursor + "==").decode())
            limit = int(params.get("limit", [limit])[0])
        except Exception:
            raise Reply(400, {"status": "ERROR", "request_id": request_id, "error": "invalid cursor"}) from None
    body: dict[str, Any] = {"ticker": ticker, "queryCount": 0, "resultsCount": 0, "adjusted": True}
    bars = [] if is_unknown(ticker) else _bars(state, "polygon", ticker, start, end)
    page, rest = bars[:limit], bars[limit:]
    if page:
        body["results"] = [
            _corrupt({"v": float(b.volume), "vw": round((b.high + b.low + b.close) / 3, 4), "o": b.open, "c": b.close,
                      "h": b.high, "l": b.low, "t": int(_ny_midnight_utc(b.day).timestamp() * 1000),
                      "n": max(1, b.volume // 120)}, kind,
                     {"volume": "v", "high": "h", "low": "l", "close": "c", "ts": "t"})
            for b, kind in page
        ]
        body["queryCount"] = body["resultsCount"] = len(page)
    body.update(status="OK", request_id=request_id, count=len(page))
    if rest:
        next_ms = int(_ny_midnight_utc(rest[0][0].day).timestamp() * 1000)
        token = base64.urlsafe_b64encode(f"limit={limit}&sort=asc".encode()).decode().rstrip("=")
        body["next_url"] = f"http://{host}/v2/aggs/ticker/{ticker}/range/1/day/{next_ms}/{to}?cursor={token}"
    return body


AV_INVALID = ("Invalid API call. Please retry or visit the documentation "
              "(https://www.alphavantage.co/documentation/) for TIME_SERIES_DAILY.")
AV_PREMIUM_FULL = ("Thank you for using Alpha Vantage! The outputsize=full parameter value is a premium feature for "
                   "the TIME_SERIES_DAILY endpoint. You may subscribe to any of the premium plans at "
                   "https://www.alphavantage.co/premium/ to instantly unlock all premium features")
AV_BURST = ("Thank you for using Alpha Vantage! Please consider spreading out your free API requests more sparingly "
            "(1 request per second). You may subscribe to any of the premium plans at "
            "https://www.alphavantage.co/premium/ to lift the free key rate limit (25 requests per day), raise the "
            "per-second burst limit, and instantly unlock all premium endpoints")
AV_NO_KEY = ("the parameter apikey is invalid or missing. Please claim your free API key on "
             "(https://www.alphavantage.co/support/#api-key). It should take less than 20 seconds.")


def alphavantage_query(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    # Every Alpha Vantage error is an HTTP 200 with a one-key body.
    if not query.get("apikey"):
        raise Reply(200, {"Error Message": AV_NO_KEY})
    function = query.get("function")
    if function == "NEWS_SENTIMENT":
        return alphavantage_news(state, query)
    if function == "OVERVIEW":
        return alphavantage_overview(state, query)
    if function != "TIME_SERIES_DAILY":
        raise Reply(200, {"Error Message": AV_INVALID.replace("TIME_SERIES_DAILY", str(function))})
    symbol = query.get("symbol", "")
    if not symbol or is_unknown(symbol):
        raise Reply(200, {"Error Message": AV_INVALID})
    outputsize = query.get("outputsize", "compact")
    if outputsize == "full" and not state.premium:
        raise Reply(200, {"Information": AV_PREMIUM_FULL})
    bars = _bars(state, "alphavantage", symbol, date(2015, 1, 1), state.today)
    if outputsize != "full":
        bars = bars[-100:]
    series: dict[str, Any] = {}
    for bar, kind in reversed(bars):  # newest first, as Alpha Vantage sends it
        values = {"1. open": f"{bar.open:.4f}", "2. high": f"{bar.high:.4f}", "3. low": f"{bar.low:.4f}",
                  "4. close": f"{bar.close:.4f}", "5. volume": str(bar.volume)}
        if kind == "negative_volume":
            values["5. volume"] = str(-bar.volume - 1)
        elif kind:
            values = _corrupt(values, kind, {"volume": "5. volume", "high": "2. high", "low": "3. low",
                                             "close": "4. close"})
        series[bar.day.isoformat()] = values
    return {
        "Meta Data": {"1. Information": "Daily Prices (open, high, low, close) and Volumes", "2. Symbol": symbol,
                      "3. Last Refreshed": bars[-1][0].day.isoformat() if bars else state.today.isoformat(),
                      "4. Output Size": "Full size" if outputsize == "full" else "Compact",
                      "5. Time Zone": "US/Eastern"},
        "Time Series (Daily)": series,
    }


def coinbase_candles(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    match = re.fullmatch(r"/products/([^/]+)/candles", path)
    assert match
    product = match.group(1)
    if is_unknown(product):
        raise Reply(404, {"message": "NotFound"})
    try:
        granularity = int(query.get("granularity", "86400"))
    except ValueError:
        raise Reply(400, {"message": "Unsupported granularity"}) from None
    if granularity not in (60, 300, 900, 3600, 21600, 86400):
        raise Reply(400, {"message": "Unsupported granularity"})
    if granularity != 86400:
        raise Reply(400, {"message": "the simulator serves granularity 86400"})
    end_dt = _parse_dt(query.get("end")) or datetime.now(UTC)
    start_dt = _parse_dt(query.get("start")) or end_dt - timedelta(seconds=granularity * 300)
    if (end_dt - start_dt).total_seconds() / granularity > 300:
        raise Reply(400, {"message": "granularity too small for the requested time range. Count of aggregations "
                                     "requested exceeds 300"})
    rows = []
    for bar, kind in reversed(_bars(state, "coinbase", product, start_dt.date(), end_dt.date())):
        t = int(datetime(bar.day.year, bar.day.month, bar.day.day, tzinfo=UTC).timestamp())
        row: list[Any] = [t, bar.low, bar.high, bar.open, bar.close, round(bar.volume / 1000, 8)]
        if kind == "negative_volume":
            row[5] = -row[5] - 1
        elif kind == "high_below_low":
            row[1], row[2] = row[2], row[1]
        elif kind == "nan":
            row[4] = "NaN"
        elif kind == "missing_field":
            row = row[:5]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ news


def _stories(state: SimState, symbols: list[str], start: date, end: date) -> list[Story]:
    found = [st for sym in symbols for st in news_stories(state.seed, sym, start, end, today=state.today)]
    return sorted(found, key=lambda st: (st.published_at, st.symbol, st.number))


def finnhub_company_news(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    _finnhub_auth(state, query, headers)
    symbol, from_, to = query.get("symbol"), query.get("from"), query.get("to")
    if not symbol or not from_ or not to:
        raise Reply(422, {"error": "Missing required parameters: symbol, from, to."})
    try:
        start, end = date.fromisoformat(from_), date.fromisoformat(to)
    except ValueError:
        raise Reply(422, {"error": "Wrong date format. Use YYYY-MM-DD."}) from None
    items = []
    for st in reversed(_stories(state, [symbol], start, end)):  # newest first
        items.append({"category": "company", "datetime": int(st.published_at.timestamp()), "headline": st.title,
                      "id": int.from_bytes(st.url.encode()[-6:], "big") % 10**8 + st.number,
                      "image": "" if st.number else f"https://img.example.com/{st.symbol.lower()}.jpg",
                      "related": st.symbol,
                      "source": st.publisher if st.number else st.publisher_url,  # a name or a site URL
                      "summary": re.sub(r"<[^>]+>", "", st.summary), "url": st.url})
    return items


def polygon_news(state: SimState, path: str, query: dict[str, str], headers: Any, host: str) -> Any:
    request_id = _polygon_auth(state, query, headers)
    cursor = query.pop("cursor", None)
    if cursor:
        try:
            query = {k: v[-1] for k, v in parse_qs(base64.urlsafe_b64decode(cursor + "==").decode()).items()}
        except Exception:
            raise Reply(400, {"status": "ERROR", "request_id": request_id, "error": "invalid cursor"}) from None
    limit = min(int(query.get("limit", 10)), 1000)
    offset = int(query.get("offset", 0))
    start = _parse_day(query.get("published_utc.gte", "2015-01-01"), "published_utc.gte")
    end = _parse_day(query.get("published_utc.lte", state.today.isoformat()), "published_utc.lte")
    stories = _stories(state, [query["ticker"]] if query.get("ticker") else [], start, end)
    if query.get("order", "desc") == "desc":
        stories.reverse()
    page = stories[offset:offset + limit]
    body: dict[str, Any] = {"results": [{
        "id": hashlib.sha256(f"polygon:{st.url}".encode()).hexdigest()[:43],
        "publisher": {"name": st.publisher, "homepage_url": st.publisher_url + "/",
                      "logo_url": "https://s3.massive.com/public/assets/news/logos/x.svg"},
        "title": st.title, "author": st.author,
        "published_utc": st.published_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        # Same story, another spelling of its URL: upper-case host and tracking parameters.
        "article_url": st.url.replace("news.example.com", "NEWS.Example.com") + "?utm_source=polygon&utm_medium=api",
        "tickers": [st.symbol], "description": re.sub(r"<[^>]+>", "", st.summary),
        "insights": [{"ticker": st.symbol, "sentiment": "positive" if st.sentiment > 0.15 else
                      "negative" if st.sentiment < -0.15 else "neutral", "sentiment_reasoning": "simulated"}],
    } for st in page], "status": "OK", "request_id": request_id, "count": len(page)}
    if offset + limit < len(stories):
        rest = dict(query, offset=str(offset + limit))
        token = base64.urlsafe_b64encode("&".join(f"{k}={v}" for k, v in rest.items()).encode()).decode().rstrip("=")
        body["next_url"] = f"http://{host}/v2/reference/news?cursor={token}"
    return body


def _polygon_auth(state: SimState, query: dict[str, str], headers: Any) -> str:
    auth = headers.get("Authorization", "")
    key = auth[7:] if auth.startswith("Bearer ") else query.get("apiKey")
    request_id = uuid.uuid4().hex
    if not key:
        raise Reply(401, {"status": "ERROR", "request_id": request_id, "error": "API Key was not provided"})
    expected = (state.keys.get("polygon") or {}).get("api_key")
    if expected and key != expected:
        raise Reply(401, {"status": "ERROR", "request_id": request_id, "error": "Unknown API Key"})
    return request_id


def alphavantage_news(state: SimState, query: dict[str, str]) -> Any:
    tickers = [t for t in query.get("tickers", "").split(",") if t]
    time_from = _av_news_time(query.get("time_from")) or datetime(2015, 1, 1, tzinfo=UTC)
    time_to = _av_news_time(query.get("time_to")) or datetime.now(UTC)
    limit = min(int(query.get("limit", 50)), 1000)
    stories = [st for st in _stories(state, tickers[:1], time_from.date(), time_to.date())
               if time_from <= st.published_at <= time_to and set(tickers) <= {st.symbol}]
    if query.get("sort", "LATEST") == "LATEST":
        stories.reverse()
    feed = [{
        "title": st.title, "url": st.url + "?utm_campaign=alphavantage",
        "time_published": st.published_at.astimezone(NEW_YORK).strftime("%Y%m%dT%H%M%S"),
        "authors": [st.author], "summary": re.sub(r"<[^>]+>", "", st.summary), "banner_image": None,
        "source": st.publisher, "category_within_source": "n/a",
        "source_domain": st.publisher_url.split("//", 1)[1],
        "topics": [{"topic": "Financial Markets", "relevance_score": "0.5"}],
        "overall_sentiment_score": st.sentiment, "overall_sentiment_label": st.sentiment_label,
        "ticker_sentiment": [{"ticker": st.symbol, "relevance_score": "0.912345",
                              "ticker_sentiment_score": f"{st.sentiment:.6f}",
                              "ticker_sentiment_label": st.sentiment_label}],
    } for st in stories[:limit]]
    return {"items": str(len(feed)), "sentiment_score_definition": AV_SENTIMENT_DEFINITION,
            "relevance_score_definition": "0 < x <= 1, with a higher score indicating higher relevance.",
            "feed": feed}


AV_SENTIMENT_DEFINITION = ("x <= -0.35: Bearish; -0.35 < x <= -0.15: Somewhat-Bearish; -0.15 < x < 0.15: Neutral; "
                           "0.15 <= x < 0.35: Somewhat_Bullish; x >= 0.35: Bullish")


def _av_news_time(value: str | None) -> datetime | None:
    if not value:
        return None
    for fmt in ("%Y%m%dT%H%M%S", "%Y%m%dT%H%M"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=NEW_YORK)
        except ValueError:
            continue
    raise Reply(200, {"Error Message": "Invalid API call. Please retry or visit the documentation "
                                       "(https://www.alphavantage.co/documentation/) for NEWS_SENTIMENT."})


def yahoo_headline_rss(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    """Yahoo Finance's headline feed: the latest 20 items for the symbols in ``s``, RSS 2.0."""
    symbols = [s for s in query.get("s", "").split(",") if s]
    if not symbols:
        raise Reply(400, "<html><body>Bad Request: missing s</body></html>", {"Content-Type": "text/html"})
    stories = _stories(state, symbols, state.today - timedelta(days=14), state.today)[-20:]
    items = []
    for i, st in enumerate(reversed(stories)):
        description = "" if i % 5 == 4 else f"<description>{xml_escape(st.summary)}</description>"  # some lack one
        items.append(f"<item><title>{xml_escape(st.title)}</title><link>{st.url}?.tsrc=rss</link>{description}"
                     f"<guid isPermaLink=\"false\">{hashlib.md5(st.url.encode()).hexdigest()}</guid>"
                     f"<pubDate>{format_datetime(st.published_at, usegmt=False)}</pubDate></item>")
    label = ",".join(symbols)
    return RawBody(
        "application/rss+xml; charset=utf-8",
        (f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>Yahoo! Finance: {label} News'
         f"</title><link>http://finance.yahoo.com/q/h?s={label.lower()}</link><description>Latest Financial News for "
         f"{label}</description><language>en-US</language>{''.join(items)}</channel></rss>").encode())


# ------------------------------------------------------------------------------------------------ fundamentals

SEC_UNDECLARED = ("<html><head><title>SEC.gov | Your Request Originates from an Undeclared Automated Tool</title>"
                  "</head><body><p>To allow for equitable access to all users, SEC reserves the right to limit "
                  "requests originating from undeclared automated tools. Your request has been identified as part "
                  "of a network of automated tools outside of the acceptable policy and will be managed until "
                  "action is taken to declare your traffic.</p><p>Please declare your traffic by updating your "
                  "user agent to include company specific information.</p></body></html>")


def _sec_user_agent(headers: Any) -> None:
    agent = headers.get("User-Agent", "")
    if "@" not in agent or agent.startswith(("python-requests", "stockpulse/")):
        raise Reply(403, SEC_UNDECLARED, {"Content-Type": "text/html"})


SIM_TICKERS = ("AAPL", "MSFT", "IBM", "AMZN", "NVDA", "GOOGL", "META", "TSLA", "BRK-B", "JPM")


def sec_company_tickers(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    _sec_user_agent(headers)
    return {str(rank): {"cik_str": sim_cik(t), "ticker": t, "title": f"{t.title()} Holdings Inc"}
            for rank, t in enumerate(SIM_TICKERS)}


def sec_company_facts(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    _sec_user_agent(headers)
    cik = int(re.fullmatch(r"/api/xbrl/companyfacts/CIK(\d{10})\.json", path).group(1))
    symbol = next((t for t in SIM_TICKERS if sim_cik(t) == cik), None)
    if symbol is None:
        raise Reply(404, "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                         "<Message>The specified key does not exist.</Message></Error>",
                    {"Content-Type": "application/xml"})
    facts: dict[str, dict[str, Any]] = {}
    for f in company_facts(state.seed, symbol, today=state.today):
        concept = facts.setdefault(f.taxonomy, {}).setdefault(f.concept, {
            "label": f.concept, "description": f"{f.concept} (simulated)", "units": {}})
        row: dict[str, Any] = {"end": f.end.isoformat(), "val": f.value, "accn": f.accession, "fy": f.fy,
                               "fp": f.fp, "form": f.form, "filed": f.filed.isoformat()}
        if f.start:
            row = {"start": f.start.isoformat(), **row}
        if f.frame:
            row["frame"] = f.frame
        concept["units"].setdefault(f.unit, []).append(row)
    return {"cik": cik, "entityName": f"{symbol.title()} Holdings Inc", "facts": facts}


def alphavantage_overview(state: SimState, query: dict[str, str]) -> Any:
    symbol = query.get("symbol", "")
    if not symbol or is_unknown(symbol):
        return {}  # Alpha Vantage's answer for a symbol it does not know
    p = company_profile(state.seed, symbol)
    latest = date(state.today.year, ((state.today.month - 1) // 3) * 3 + 1, 1) - timedelta(days=1)
    return {"Symbol": symbol, "AssetType": "Common Stock", "Name": p["name"], "Description": f"{p['name']} makes things.",
            "CIK": str(p["cik"]), "Exchange": p["exchange"], "Currency": "USD", "Country": "USA",
            "Sector": str(p["sector"]).upper(), "Industry": str(p["industry"]).upper(),
            "Address": "1 Main Street, Springfield, USA", "OfficialSite": f"https://www.{symbol.lower()}.example.com",
            "FiscalYearEnd": "December", "LatestQuarter": latest.isoformat(),
            "MarketCapitalization": str(p["market_cap"]), "EBITDA": "None", "PERatio": str(p["pe"]),
            "PEGRatio": "-", "BookValue": "23.4", "DividendPerShare": "0", "DividendYield": "None",
            "EPS": str(p["eps"]), "Beta": str(p["beta"]), "SharesOutstanding": str(p["shares"]),
            "52WeekHigh": "199.62", "52WeekLow": "164.08"}


def finnhub_profile2(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    _finnhub_auth(state, query, headers)
    symbol = query.get("symbol", "")
    if is_unknown(symbol) or not symbol:
        return {}  # Finnhub's answer for an unknown symbol or a fund
    p = company_profile(state.seed, symbol)
    return {"country": "US", "currency": "USD", "estimateCurrency": "USD", "exchange": f"{p['exchange']} NMS",
            "finnhubIndustry": p["sector"], "ipo": p["ipo"].isoformat(),
            "logo": f"https://static2.finnhub.io/file/publicdatany/finnhubimage/stock_logo/{symbol}.png",
            "marketCapitalization": p["market_cap"] / 1e6, "name": p["name"], "phone": "14089961010",
            "shareOutstanding": p["shares"] / 1e6, "ticker": symbol, "weburl": f"https://www.{symbol.lower()}.example.com/"}


def finnhub_metric(state: SimState, path: str, query: dict[str, str], headers: Any) -> Any:
    _finnhub_auth(state, query, headers)
    symbol = query.get("symbol", "")
    if query.get("metric") != "all":
        raise Reply(422, {"error": "Wrong metric. Use all."})
    if is_unknown(symbol):
        return {}
    p = company_profile(state.seed, symbol)
    years = [date(y, 12, 31) for y in range(state.today.year - 3, state.today.year)]
    return {"metric": {"peTTM": p["pe"], "beta": p["beta"], "52WeekHigh": 199.62, "52WeekLow": 164.08,
                       "totalDebt/totalEquityQuarterly": 1.87, "epsTTM": p["eps"], "dividendYieldIndicatedAnnual": None},
            "metricType": "all", "symbol": symbol,
            "series": {"annual": {"eps": [{"period": d.isoformat(), "v": round(p["eps"] * (0.8 + 0.1 * i), 4)}
                                          for i, d in enumerate(reversed(years))]},
                       "quarterly": {"eps": [{"period": years[-1].isoformat(), "v": round(p["eps"] / 4, 4)}]}}}


def _finnhub_auth(state: SimState, query: dict[str, str], headers: Any) -> None:
    token = headers.get("X-Finnhub-Token") or query.get("token")
    if not token:
        raise Reply(401, {"error": "Please use an API key."})
    expected = (state.keys.get("finnhub") or {}).get("api_key")
    if expected and token != expected:
        raise Reply(401, {"error": "Invalid API key."})


class RawBody:
    """A handler's non-JSON answer (feeds)."""

    def __init__(self, content_type: str, body: bytes, status: int = 200):
        self.content_type, self.body, self.status = content_type, body, status


def _parse_dt(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        if value.isdigit():
            return datetime.fromtimestamp(int(value), UTC)
        raise Reply(400, {"message": f"Invalid time: {value}"}) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# (provider, path pattern, handler); the paths of different providers never overlap.
ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
    ("alpaca", re.compile(r"^/v2/stocks/(?:[^/]+/)?bars$"), alpaca_bars),
    ("alpaca", re.compile(r"^/v2/stocks/(?:[^/]+/)?trades$"), alpaca_trades),
    ("polygon", re.compile(r"^/v2/aggs/ticker/"), polygon_aggs),
    ("alphavantage", re.compile(r"^/query$"), alphavantage_query),
    ("coinbase", re.compile(r"^/products/[^/]+/candles$"), coinbase_candles),
    ("finnhub", re.compile(r"^/api/v1/company-news$"), finnhub_company_news),
    ("polygon", re.compile(r"^/v2/reference/news$"), polygon_news),
    ("rss", re.compile(r"^/rss/2\.0/headline$"), yahoo_headline_rss),
    ("finnhub", re.compile(r"^/api/v1/stock/profile2$"), finnhub_profile2),
    ("finnhub", re.compile(r"^/api/v1/stock/metric$"), finnhub_metric),
    ("sec", re.compile(r"^/api/xbrl/companyfacts/CIK\d{10}\.json$"), sec_company_facts),
    ("sec", re.compile(r"^/files/company_tickers\.json$"), sec_company_tickers),
]

RATE_LIMIT_BODIES = {
    "alpaca": {"message": "too many requests."},
    "polygon": {"status": "ERROR", "request_id": "sim",
                "error": "You've exceeded the maximum requests per minute, please wait or upgrade your "
                         "subscription to continue. https://polygon.io/pricing"},
    "alphavantage": {"Information": AV_BURST},
    "coinbase": {"message": "Public rate limit exceeded"},
    "finnhub": {"error": "API limit reached. Please try again later. Remaining Limit: 0"},
}

HTML_PAGE = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
             b"</h1></center><hr><center>cloudflare</center></body></html>")


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stockpulse-sim/1"
    state: SimState  # set on the handler class built by make_server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, orjson.dumps(body), headers=headers)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if parts.path == "/_sim/stats":
            with self.state.lock:
                return self._json(200, {"requests": dict(self.state.stats)})
        if parts.path == "/_sim/health":
            return self._json(200, {"status": "ok"})
        if parts.path == "/_sim/stream":
            return self._json(200, self.state.stream.snapshot())
        if parts.path in self.state.feeds:  # feeds a test registered with POST /_sim/feeds
            provider, handler = "rss", None
        else:
            route = next(((p, h) for p, pattern, h in ROUTES if pattern.match(parts.path)), None)
            provider, handler = route if route else (None, None)
        if provider is None:
            return self._json(404, {"message": "not found", "path": parts.path})
        with self.state.lock:
            self.state.stats[provider] += 1
        fault = self.headers.get("X-Sim-Fault") or query.pop("sim_fault", None) or self.state.next_fault(provider)
        if fault and self._fault(provider, fault):
            return
        try:
            if handler is None:
                feed = self.state.feeds[parts.path]
                body: Any = RawBody(feed["content_type"], feed["body"].encode(feed.get("encoding", "utf-8")))
            else:
                kwargs = {"host": self.headers.get("Host", "127.0.0.1")} if provider == "polygon" else {}
                body = handler(self.state, parts.path, query, self.headers, **kwargs)
            if isinstance(body, RawBody):
                self._send(body.status, body.body, body.content_type)
            else:
                self._json(200, body)
        except Reply as reply:
            if isinstance(reply.body, str):
                self._send(reply.status, reply.body.encode(), reply.headers.get("Content-Type", "text/plain"))
            else:
                self._json(reply.status, reply.body, reply.headers)

    def _fault(self, provider: str, kind: str) -> bool:
        """Serve a fault; False when it only delays the normal answer."""
        if kind == "429":
            headers = {"Retry-After": "1"} if provider != "alphavantage" else {}
            status = 200 if provider == "alphavantage" else 429
            self._json(status, RATE_LIMIT_BODIES.get(provider, {"message": "rate limited"}), headers)
        elif kind in ("500", "502", "503"):
            self._json(int(kind), {"message": "internal error"} if provider != "polygon"
                       else {"status": "ERROR", "request_id": "sim", "error": "Internal server error"})
        elif kind == "slow":
            time.sleep(self.state.slow_s)
            return False
        elif kind == "timeout":
            time.sleep(self.state.slow_s * 10)
            self.close_connection = True
        elif kind == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
        elif kind == "malformed":
            self._send(200, b'{"bars": {"AAPL": [{"t": "2024-01-02T05:00:00Z", "o": 18')
        elif kind == "html":
            self._send(502, HTML_PAGE, "text/html")
        elif kind == "empty":
            self._send(200, b"")
        elif kind == "huge":
            self._send(200, b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}')
        elif kind == "soft":
            self._json(200, RATE_LIMIT_BODIES["alphavantage"] if provider == "alphavantage"
                       else RATE_LIMIT_BODIES.get(provider, {}))
        else:
            self._json(400, {"message": f"unknown sim fault {kind!r}; known: {', '.join(FAULT_KINDS)}"})
        return True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._json(400, {"message": "body must be JSON"})
        path = urlsplit(self.path).path
        if path == "/_sim/stream":
            try:
                return self._json(200, self.state.stream.act(payload))
            except ValueError as exc:
                return self._json(400, {"message": str(exc)})
        with self.state.lock:
            if path == "/_sim/faults":
                kind = str(payload.get("kind"))
                if kind not in FAULT_KINDS:
                    return self._json(400, {"message": f"unknown fault {kind!r}"})
                self.state.queued.setdefault(payload.get("provider", "*"), []).extend(
                    [kind] * int(payload.get("times", 1)))
                return self._json(200, {"queued": self.state.queued})
            if path == "/_sim/fault-rate":
                kinds = [str(k) for k in payload.get("kinds") or ["503"]]
                if any(k not in FAULT_KINDS for k in kinds):
                    return self._json(400, {"message": f"unknown fault kind; known: {', '.join(FAULT_KINDS)}"})
                self.state.config_faults[str(payload.get("provider"))] = {"rate": float(payload.get("rate", 0)),
                                                                         "kinds": kinds}
                return self._json(200, {"faults": self.state.config_faults})
            if path == "/_sim/feeds":
                if not str(payload.get("path", "")).startswith("/feeds/") or not isinstance(payload.get("body"), str):
                    return self._json(400, {"message": "expected {\"path\": \"/feeds/...\", \"body\": \"<xml>\"}"})
                self.state.feeds[payload["path"]] = {
                    "body": payload["body"], "encoding": payload.get("encoding", "utf-8"),
                    "content_type": payload.get("content_type", "application/rss+xml")}
                return self._json(200, {"feeds": sorted(self.state.feeds)})
            if path == "/_sim/corrupt":
                if payload.get("kind") not in CORRUPTIONS:
                    return self._json(400, {"message": f"unknown corruption; known: {', '.join(CORRUPTIONS)}"})
                self.state.corruptions.append(payload)
                return self._json(200, {"corruptions": len(self.state.corruptions)})
        self._json(404, {"message": "not found"})

    def do_DELETE(self) -> None:
        if urlsplit(self.path).path == "/_sim/faults":
            with self.state.lock:
                self.state.queued.clear()
                self.state.corruptions.clear()
                self.state.feeds.clear()
                self.state.stats.clear()
                self.state.config_faults = dict(self.state.initial_faults)
            return self._json(200, {"cleared": True})
        self._json(404, {"message": "not found"})


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ws_server: Any = None
    ws_url: str = ""

    def shutdown(self) -> None:
        if self.ws_server is not None:
            self.ws_server.shutdown()
        super().shutdown()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up on a dropped, slow or huge response are part of the job here.
        log.debug("connection from %s ended abruptly", client_address, exc_info=True)


def make_server(host: str = "127.0.0.1", port: int = 0, state: SimState | None = None) -> SimServer:
    handler = type("BoundSimHandler", (SimHandler,), {"state": state or SimState()})
    return SimServer((host, port), handler)


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, state: SimState | None = None,
                    ws_port: int = 0) -> tuple[SimServer, str]:
    """The HTTP simulator and, beside it, the websocket streams (``server.ws_url``)."""
    state = state or SimState()
    server = make_server(host, port, state)
    thread = threading.Thread(target=server.serve_forever, name="stockpulse-sim", daemon=True)
    thread.start()
    server.ws_server, server.ws_url = serve_streams(state.stream, host, ws_port, keys=state.keys)
    return server, f"http://{host}:{server.server_address[1]}"


def state_from_settings(seed: int | None = None) -> SimState:
    """Simulator state from the ``sim`` config section (seed, faults, keys, slow_s, premium)."""
    from stockpulse.config import get_settings

    conf = get_settings().sim
    return SimState(seed=int(seed if seed is not None else conf.get("seed", 42)), faults=conf.get("faults"),
                    keys=conf.get("keys"), slow_s=float(conf.get("slow_s", 3.0)),
                    premium=bool(conf.get("premium", False)))
