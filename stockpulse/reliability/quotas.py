"""Provider quotas shared by every worker on every host: the ``limits`` library with Redis storage
(Celery's own ``rate_limit`` is per worker). A request that finds no free slot raises
:class:`QuotaWait`, and the stage re-queues itself with a countdown instead of sleeping in a worker slot."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from stockpulse.config import get_settings
from stockpulse.errors import TransientError

KEY_PREFIX = "stockpulse:quota"


class QuotaWait(TransientError):
    """No request slot is free now; not a failure, so it does not use up the retry budget."""


@dataclass(frozen=True)
class QuotaStatus:
    limit: str | None
    remaining: int | None
    resets_in_s: float | None


@lru_cache(maxsize=8)
def _limiter(redis_url: str) -> MovingWindowRateLimiter:
    # A moving window never lets more than N requests through in any window, as providers count them.
    return MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix=KEY_PREFIX))


@lru_cache(maxsize=64)
def _item(rate: str) -> RateLimitItem:
    return parse(rate)


def rate_for(provider: str) -> str | None:
    from stockpulse.providers import PROVIDERS

    settings = get_settings().provider(provider)
    spec = PROVIDERS.get(provider)
    return settings.rate_limit or (spec.default_rate_limit if spec else None)


def acquire(provider: str) -> None:
    """Take one request slot for ``provider`` or raise QuotaWait saying how long until one frees up."""
    rate = rate_for(provider)
    if not rate:
        return
    limiter, item = _limiter(get_settings().redis_url), _item(rate)
    if limiter.hit(item, provider):
        return
    stats = limiter.get_window_stats(item, provider)
    wait = max(0.05, stats.reset_time - time.time())
    raise QuotaWait(f"{provider}: request quota {rate} used up; next slot in {wait:.1f}s", retry_after=wait,
                    provider=provider)


def status(provider: str) -> QuotaStatus:
    rate = rate_for(provider)
    if not rate:
        return QuotaStatus(None, None, None)
    stats = _limiter(get_settings().redis_url).get_window_stats(_item(rate), provider)
    return QuotaStatus(rate, stats.remaining, max(0.0, stats.reset_time - time.time()))


def reset(provider: str) -> None:
    rate = rate_for(provider)
    if rate:
        _limiter(get_settings().redis_url).clear(_item(rate), provider)
