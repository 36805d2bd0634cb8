"""Coinbase Exchange public candles (https://docs.cdp.coinbase.com/exchange/reference/exchangerestapi_getproductcandles).

Keyless. ``GET /products/{product_id}/candles?granularity=86400&start=ISO&end=ISO``; rows are
``[time, low, high, open, close, volume]`` (time in epoch seconds, newest first), at most 300 per request,
so a range is asked for in windows of 300 candles. Errors are ``{"message": ...}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from stockpulse.errors import PermanentError
from stockpulse.providers.base import (
    MISSING,
    Fetcher,
    ProviderSpec,
    Query,
    bar_record,
    daily_from_epoch,
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


PROVIDER = ProviderSpec(
    name="coinbase",
    default_base_url="https://api.exchange.coinbase.com",
    fetchers={"bars": CoinbaseCandlesFetcher},
    default_rate_limit="10/second",  # public endpoints
    description="Coinbase Exchange public candles (keyless crypto)",
)
