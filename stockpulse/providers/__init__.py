"""Provider registry: one module per provider, each declaring a ``PROVIDER`` spec. Adding a provider is
writing its module and listing it here."""

from __future__ import annotations

from stockpulse.providers import alpaca, alphavantage, coinbase, finnhub, polygon, rss, sec
from stockpulse.providers.base import Fetcher, ProviderClient, ProviderSpec, Query, ResponseCache

PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec for spec in (alpaca.PROVIDER, polygon.PROVIDER, alphavantage.PROVIDER, coinbase.PROVIDER,
                                 finnhub.PROVIDER, rss.PROVIDER, sec.PROVIDER)
}


def get_fetcher(provider: str, data_type: str, *, with_client: bool = True,
                checkpoint: ResponseCache | None = None) -> Fetcher:
    """The fetcher for (provider, data type), configured from settings; the client is only built when the
    caller will talk to the provider (the transform stage does not)."""
    from stockpulse.config import get_settings
    from stockpulse.errors import PermanentError

    spec = PROVIDERS.get(provider)
    if spec is None or data_type not in spec.fetchers:
        raise PermanentError(f"provider {provider!r} does not supply {data_type!r}")
    settings = get_settings().provider(provider)
    client = ProviderClient(spec, settings, checkpoint) if with_client else None
    return spec.fetchers[data_type](settings, client)


__all__ = ["PROVIDERS", "Fetcher", "ProviderClient", "ProviderSpec", "Query", "get_fetcher"]
