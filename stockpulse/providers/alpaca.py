"""Alpaca Market Data v2 (https://docs.alpaca.markets/reference/stockbars, .../stocktrades, and the realtime
stock data stream).

Multi-symbol bars: ``GET /v2/stocks/bars?symbols=A,B&timeframe=1Day``; ``bars`` is an object keyed by
symbol, ``limit`` counts across all symbols, and pages chain through ``next_page_token`` until it is null.
Auth is the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` header pair. Daily bars are stamped at midnight
New York time expressed in UTC (T05:00Z in winter, T04:00Z in summer).

Trades: ``GET /v2/stocks/trades?symbols=..&start=..&end=..`` (start and end inclusive, RFC 3339), ``trades``
keyed by symbol, sorted by symbol then time, paged like bars; a trade is ``{"t","x","p","s","c","i","z"}``
with ``t`` in nanoseconds. The stream (``wss://stream.data.alpaca.markets/v2/{feed}``) sends the same trades
as ``T: t`` messages, so a gap filled over REST and the live trades share their keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from stockpulse.errors import PermanentError, TransientError
from stockpulse.providers.base import (
    MISSING,
    Fetcher,
    ProviderSpec,
    Query,
    StreamFrame,
    TradeStream,
    compact_bar_record,
    decode_frame,
    intraday_ts,
    session_date_ts,
)

TIMEFRAMES = {"1m": "1Min", "5m": "5Min", "15m": "15Min", "1h": "1Hour", "1d": "1Day"}
INTERVAL_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}
MAX_PAGES = 10_000


def _auth_headers(fetcher: Fetcher) -> dict[str, str]:
    return {"APCA-API-KEY-ID": fetcher.settings.api_key or "", "APCA-API-SECRET-KEY": fetcher.settings.api_secret or ""}


def _pages(fetcher: Fetcher, path: str, params: dict[str, Any], key: str) -> list[Any]:
    """Every page of a multi-symbol endpoint (``key`` is an object keyed by symbol), through next_page_token."""
    assert fetcher.client is not None
    pages = []
    for _ in range(MAX_PAGES):
        body = fetcher.client.get_json(path, params=params, headers=_auth_headers(fetcher))
        if not isinstance(body, dict) or key not in body or not isinstance(body[key], dict | None):
            raise PermanentError(f"alpaca: unexpected {key} payload (expected {{'{key}': {{symbol: [...]}}, ...}})",
                                 provider="alpaca")
        pages.append(body)
        token = body.get("next_page_token")
        if not token:
            return pages
        params["page_token"] = token
    raise PermanentError(f"alpaca: more than {MAX_PAGES} pages; narrow the range", provider="alpaca")


def rfc3339_us(value: Any) -> Any:
    """Alpaca's RFC 3339 times carry up to nine fractional digits; keep microseconds, in UTC ISO form."""
    if not isinstance(value, str) or not value.endswith("Z"):
        return value
    head, dot, fraction = value[:-1].partition(".")
    try:
        moment = datetime.fromisoformat(f"{head}.{fraction[:6].ljust(6, '0')}" if dot else head)
    except ValueError:
        return value
    return moment.replace(tzinfo=UTC).isoformat(timespec="microseconds")


def trade_record(symbol: Any, row: Any) -> dict[str, Any]:
    """A trade of the REST endpoint or the stream (same keys); anything odd is passed on for validation."""
    if not isinstance(row, dict):
        return {"source": "alpaca", "symbol": symbol, "_raw": row}
    conditions = row.get("c")
    return {"source": "alpaca", "symbol": symbol, "ts": rfc3339_us(row.get("t")),
            "trade_id": str(row["i"]) if row.get("i") is not None else None, "price": row.get("p"),
            "size": row.get("s"),
            "conditions": ",".join(map(str, conditions)) if isinstance(conditions, list) and conditions else None,
            "exchange": row.get("x")}


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AlpacaTradesFetcher(Fetcher):
    """Historical trades: a stream's gap fill (an exact window) or a manual run over whole days."""

    data_type = "trades"

    def extract(self, query: Query) -> list[Any]:
        since, until = query.window()
        return _pages(self, "/v2/stocks/trades", {
            "symbols": ",".join(query.symbols), "start": _iso_z(since), "end": _iso_z(until),
            "limit": int(self.settings.options.get("page_limit", 10_000)),
            "feed": self.settings.options.get("feed", "iex"), "sort": "asc"}, "trades")

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        for body in pages:
            for symbol, rows in (body.get("trades") or {}).items():
                for row in rows or ():
                    yield trade_record(symbol, row)


class AlpacaBarsFetcher(Fetcher):
    data_type = "bars"

    def extract(self, query: Query) -> list[Any]:
        params: dict[str, Any] = {
            "symbols": ",".join(query.symbols),
            "timeframe": TIMEFRAMES[query.interval],
            "start": f"{query.start.isoformat()}T00:00:00Z",
            "end": f"{query.end.isoformat()}T23:59:59Z",
            "limit": int(self.settings.options.get("page_limit", 10_000)),
            "adjustment": self.settings.options.get("adjustment", "raw"),
            "feed": self.settings.options.get("feed", "iex"),
            "sort": "asc",
        }
        return _pages(self, "/v2/stocks/bars", params, "bars")

    def requests_needed(self, query: Query) -> int:
        # One page holds ``limit`` bars across all symbols; weekdays stand for sessions (390 minutes each).
        days = sum(1 for i in range((query.end - query.start).days + 1)
                   if (query.start + timedelta(days=i)).weekday() < 5)
        per_day = 1 if query.interval == "1d" else 390 // INTERVAL_MINUTES.get(query.interval, 1)
        limit = int(self.settings.options.get("page_limit", 10_000))
        return max(1, -(-len(query.symbols) * days * per_day // limit))

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        daily = query.interval == "1d"
        for body in pages:
            for symbol, rows in (body.get("bars") or {}).items():
                for row in rows or ():
                    t = row.get("t", MISSING) if isinstance(row, dict) else MISSING
                    yield compact_bar_record(symbol, query.interval, row,
                                             session_date_ts(t) if daily else intraday_ts(t), "alpaca")


# Stream errors (docs: realtime stock data): what the consumer does about each code.
STREAM_ERRORS_TRANSIENT = {404: "auth timeout", 406: "connection limit exceeded", 407: "slow client",
                           500: "internal error"}


class AlpacaTradeStream(TradeStream):
    """Alpaca market data v2 stream: ``{"action":"auth","key","secret"}`` after connecting, then
    ``{"action":"subscribe","trades":[..],"bars":[..]}`` (minute bars unless the pipeline sets
    ``stream_bars: false``). Every message is an array of ``{"T": type, ...}``: ``t`` trades, ``b`` minute
    bars (loaded into ``bars`` with interval 1m), ``success``/``subscription`` control messages, ``error``
    with a code. Auth failure (402), an insufficient plan (409), a symbol limit (405) and protocol errors
    end the consumer; a connection limit (406, usually a stale connection still open), slow client (407),
    auth timeout (404) and internal errors (500) reconnect with backoff."""

    calendar = "XNYS"  # US equities: no trades outside NYSE sessions (pre/post-market aside)

    def url(self) -> str:
        base = str(self.settings.options.get("ws_url", "wss://stream.data.alpaca.markets")).rstrip("/")
        return f"{base}/v2/{self.settings.options.get('feed', 'iex')}"

    def handshake(self) -> list[str]:
        return [json.dumps({"action": "auth", "key": self.settings.api_key or "",
                            "secret": self.settings.api_secret or ""})]

    def _channels(self, symbols: tuple[str, ...]) -> dict[str, list[str]]:
        channels = {"trades": list(symbols)}
        if self.settings.options.get("stream_bars", True) is not False:
            channels["bars"] = list(symbols)
        return channels

    def subscribe(self, symbols: tuple[str, ...]) -> list[str]:
        return [json.dumps({"action": "subscribe", **self._channels(symbols)})] if symbols else []

    def unsubscribe(self, symbols: tuple[str, ...]) -> list[str]:
        return [json.dumps({"action": "unsubscribe", **self._channels(symbols)})] if symbols else []

    def parse(self, text: str) -> StreamFrame:
        messages, bad = decode_frame(text, list)
        if bad:
            return bad
        frame = StreamFrame()
        for message in messages:
            kind = message.get("T") if isinstance(message, dict) else None
            if kind == "t":
                frame.records.append(trade_record(message.get("S"), message))
            elif kind == "b":
                frame.extra.setdefault("bars", []).append(
                    compact_bar_record(message.get("S"), "1m", message, intraday_ts(rfc3339_us(message.get("t"))),
                                       "alpaca"))
            elif kind == "error":
                code, msg = message.get("code"), message.get("msg")
                error_type = TransientError if code in STREAM_ERRORS_TRANSIENT else PermanentError
                frame.error = error_type(f"alpaca stream error {code}: {msg}", provider="alpaca")
                return frame
            elif kind is None:
                frame.malformed = f"message without a type: {str(message)[:200]}"
            # success, subscription and the types not subscribed to (quotes, statuses...) carry no data to load
        return frame


PROVIDER = ProviderSpec(
    name="alpaca",
    default_base_url="https://data.alpaca.markets",
    fetchers={"bars": AlpacaBarsFetcher, "trades": AlpacaTradesFetcher},
    streams={"trades": AlpacaTradeStream},
    required_secrets=("api_key", "api_secret"),
    default_rate_limit="200/minute",  # Basic (free) plan
    description="Alpaca Market Data v2: US equities bars, trades and the trades/minute-bars stream (IEX on the free plan)",
)
