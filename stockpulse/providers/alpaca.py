"""Alpaca Market Data v2 (https://docs.alpaca.markets/reference/stockbars).

Multi-symbol bars: ``GET /v2/stocks/bars?symbols=A,B&timeframe=1Day``; ``bars`` is an object keyed by
symbol, ``limit`` counts across all symbols, and pages chain through ``next_page_token`` until it is null.
Auth is the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` header pair. Daily bars are stamped at midnight
New York time expressed in UTC (T05:00Z in winter, T04:00Z in summer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stockpulse.errors import PermanentError
from stockpulse.providers.base import (
    MISSING,
    Fetcher,
    ProviderSpec,
    Query,
    compact_bar_record,
    intraday_ts,
    session_date_ts,
)

TIMEFRAMES = {"1m": "1Min", "5m": "5Min", "15m": "15Min", "1h": "1Hour", "1d": "1Day"}
MAX_PAGES = 10_000


class AlpacaBarsFetcher(Fetcher):
    data_type = "bars"

    def extract(self, query: Query) -> list[Any]:
        assert self.client is not None
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
        headers = {"APCA-API-KEY-ID": self.settings.api_key or "",
                   "APCA-API-SECRET-KEY": self.settings.api_secret or ""}
        pages = []
        for _ in range(MAX_PAGES):
            body = self.client.get_json("/v2/stocks/bars", params=params, headers=headers)
            if not isinstance(body, dict) or "bars" not in body or not isinstance(body["bars"], dict | None):
                raise PermanentError("alpaca: unexpected bars payload (expected {'bars': {symbol: [...]}, ...})",
                                     provider="alpaca")
            pages.append(body)
            token = body.get("next_page_token")
            if not token:
                return pages
            params["page_token"] = token
        raise PermanentError(f"alpaca: more than {MAX_PAGES} pages; narrow the range", provider="alpaca")

    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]:
        daily = query.interval == "1d"
        for body in pages:
            for symbol, rows in (body.get("bars") or {}).items():
                for row in rows or ():
                    t = row.get("t", MISSING) if isinstance(row, dict) else MISSING
                    yield compact_bar_record(symbol, query.interval, row,
                                             session_date_ts(t) if daily else intraday_ts(t), "alpaca")


PROVIDER = ProviderSpec(
    name="alpaca",
    default_base_url="https://data.alpaca.markets",
    fetchers={"bars": AlpacaBarsFetcher},
    required_secrets=("api_key", "api_secret"),
    default_rate_limit="200/minute",  # Basic (free) plan
    description="Alpaca Market Data v2: US equities bars (IEX feed on the free plan)",
)
