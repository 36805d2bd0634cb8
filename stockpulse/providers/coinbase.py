"""Coinbase Exchange public candles (https://docs.cdp.coinbase.com/exchange/reference/exchangerestapi_getproductcandles).

Keyless. ``GET /products/{product_id}/candles?granularity=86400&start=ISO&end=ISO``; rows are
``[time, low, high, open, close, volume]`` (time in epoch seconds, newest first), at most 300 per request,
so a range is asked for in windows of 300 candles. Errors are ``{"message": ...}``.

Trades stream, also keyless: ``wss://ws-feed.exchange.coinbase.com``, channel ``matches`` (see
``CoinbaseMatchesStream``), so a new user sees live data with no API key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from stockpulse.errors import PermanentError
from stockpulse.providers.base import (
    MISSING,
    Fetcher,
    ProviderSpec,
    Query,
    StreamFrame,
    TradeStream,
    bar_record,
    daily_from_epoch,
    decode_frame,
    intraday_ts,
    number,
)

GRANULARITY = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
MAX_CANDLES = 300


class CoinbaseCandlesFetcher(Fetcher):
    data_type = "bars"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
        granularity = GRANULARITY[query.interval]
        step = timedelta(seconds=granularity * MAX_CANDLES)
        start = datetime.combine(query.start, datetime.min.time(), UTC)
        end = datetime.combine(query.end, datetime.min.time(), UTC) + timedelta(days=1)
        pages = []
        for symbol in query.symbols:
            window = start
            while window < end:
                window_end = min(window + step, end)
                body = self.client.get_json(f"/products/{symbol}/candles", params={
                    "granularity": granularity,
                    "start": window.isoformat().replace("+00:00", "Z"),
                    # The end is inclusive at Coinbase; stop one granule short of the next window.
                    "end": (window_end - timedelta(seconds=granularity)).isoformat().replace("+00:00", "Z"),
                })
                if not isinstance(body, list):
                    raise PermanentError(f"coinbase: expected a list of candles for {symbol}",
                                         provider="coinbase")
                pages.append({"symbol": symbol, "rows": body})
                window = window_end
        return pages

    def requests_needed(self, query: Query) -> int:
        seconds = ((query.end - query.start).days + 1) * 86400
        return len(query.symbols) * -(-seconds // (GRANULARITY[query.interval] * MAX_CANDLES))

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        daily = query.interval == "1d"
        for page in pages:
            symbol = page["symbol"]
            for row in page["rows"]:
                if not isinstance(row, list) or len(row) < 6:
                    yield {"symbol": symbol, "_raw": row}
                    continue
                t, low, high, o, c, v = row[:6]
                yield bar_record(symbol, query.interval,
                                 daily_from_epoch(t, tz=UTC) if daily else intraday_ts(t, unit="s"),
                                 number(o), number(high), number(low), number(c),
                                 number(v) if v is not None else MISSING, "coinbase")


class CoinbaseMatchesStream(TradeStream):
    """Coinbase Exchange websocket feed, ``matches`` and ``heartbeat`` channels: subscribe within 5 s with
    ``{"type":"subscribe","product_ids":[..],"channels":["matches","heartbeat"]}``; the server confirms with
    ``subscriptions``, sends one ``last_match`` per product (a real trade, loaded too: loads are idempotent),
    then one ``match`` a frame: ``trade_id`` (unique per product), ``price``/``size`` as strings, ``time`` with
    microseconds, ``side`` the maker's side. ``error`` frames (an unknown product, a bad channel) are
    configuration errors and end the consumer; other types (heartbeat, new ones) are ignored, as the docs ask.
    No REST source fills this stream's gaps: they are recorded and reported."""

    def url(self) -> str:
        return str(self.settings.options.get("ws_url", "wss://ws-feed.exchange.coinbase.com"))

    # heartbeat: one message a second per product, so a quiet market is not taken for a dead socket.
    CHANNELS = ("matches", "heartbeat")

    def subscribe(self, symbols: tuple[str, ...]) -> list[str]:
        return [json.dumps({"type": "subscribe", "product_ids": list(symbols), "channels": list(self.CHANNELS)})] \
            if symbols else []

    def unsubscribe(self, symbols: tuple[str, ...]) -> list[str]:
        return [json.dumps({"type": "unsubscribe", "product_ids": list(symbols), "channels": list(self.CHANNELS)})] \
            if symbols else []

    def parse(self, text: str) -> StreamFrame:
        message, bad = decode_frame(text, dict)
        if bad:
            return bad
        kind = message.get("type")
        if kind == "error":
            return StreamFrame(error=PermanentError(
                f"coinbase stream: {message.get('message')} ({message.get('reason')})", provider="coinbase"))
        if kind not in ("match", "last_match"):
            return StreamFrame()
        trade_id = message.get("trade_id")
        return StreamFrame(records=[{
            "source": "coinbase", "symbol": message.get("product_id"), "ts": intraday_ts(message.get("time")),
            "trade_id": str(trade_id) if trade_id is not None else None, "price": number(message.get("price")),
            "size": number(message.get("size")), "conditions": None, "exchange": None}])


PROVIDER = ProviderSpec(
    name="coinbase",
    default_base_url="https://api.exchange.coinbase.com",
    fetchers={"bars": CoinbaseCandlesFetcher},
    streams={"trades": CoinbaseMatchesStream},
    default_rate_limit="10/second",  # public endpoints
    description="Coinbase Exchange public candles and the matches (trades) stream: keyless crypto",
)
