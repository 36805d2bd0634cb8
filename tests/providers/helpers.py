from __future__ import annotations

from datetime import date, datetime
from typing import Any

from stockpulse.config import ProviderSettings
from stockpulse.providers import PROVIDERS, ProviderClient, Query


def fetch(provider: str, sim_url: str, symbols: tuple[str, ...], start: date, end: date, *,
          interval: str = "1d", data_type: str = "bars", window: tuple[datetime, datetime] | None = None,
          **settings: Any) -> tuple[list[dict[str, Any]], ProviderClient]:
    """extract + transform through the real HTTP client against the simulator."""
    spec = PROVIDERS[provider]
    defaults: dict[str, Any] = {"api_key": "test-key", "api_secret": "test-secret", "timeout_s": 5,
                                "request_retries": 0}
    defaults.update(settings)
    conf = ProviderSettings(name=provider, base_url=sim_url, **defaults)
    client = ProviderClient(spec, conf)
    fetcher = spec.fetchers[data_type](conf, client)
    query = Query(symbols=symbols, interval=interval, start=start, end=end,
                  since=window[0] if window else None, until=window[1] if window else None)
    pages = fetcher.extract(query)
    return list(fetcher.transform(pages, query)), client
