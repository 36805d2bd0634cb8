"""A circuit breaker per provider (pybreaker), its state in Redis so every worker shares it.

Only transient failures count: after ``fail_max`` in a row the provider is *open* and calls fail fast
with :class:`BreakerOpen` (tasks back off without calling it); after ``reset_timeout_s`` one call is let
through *half-open*, and its success closes the breaker again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

import pybreaker

from stockpulse.config import get_settings
from stockpulse.errors import TransientError
from stockpulse.redis_conn import redis_client

log = logging.getLogger("stockpulse.breaker")
NAMESPACE = "stockpulse:breaker:{provider}"
T = TypeVar("T")


class BreakerOpen(TransientError):
    """The provider's breaker is open: not a failure of this task, so no retry budget is used."""


class _LogTransitions(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        log.warning("circuit breaker for %s: %s -> %s", cb.name, getattr(old_state, "name", old_state),
                    new_state.name, extra={"provider": cb.name, "breaker_state": new_state.name})


def _is_not_transient(exc: BaseException) -> bool:
    # A permanent error (bad key, unknown symbol) says nothing about the provider's health.
    return not isinstance(exc, TransientError) or isinstance(exc, BreakerOpen)


@lru_cache(maxsize=64)
def get_breaker(provider: str, redis_url: str | None = None) -> pybreaker.CircuitBreaker:
    conf = dict(get_settings().provider(provider).breaker or {})
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis_client(redis_url),
                                            namespace=NAMESPACE.format(provider=provider))
    return pybreaker.CircuitBreaker(
        fail_max=int(conf.get("fail_max", 5)), reset_timeout=float(conf.get("reset_timeout_s", 60)),
        exclude=[_is_not_transient], state_storage=storage, listeners=[_LogTransitions()], name=provider,
        # Keep the provider's own error on the call that trips the breaker: its message says what went wrong.
        throw_new_error_on_trip=False,
    )


def call(provider: str, func: Callable[[], T]) -> T:
    breaker = get_breaker(provider, get_settings().redis_url)
    try:
        return breaker.call(func)
    except pybreaker.CircuitBreakerError:
        wait = remaining_open_s(breaker)
        raise BreakerOpen(f"{provider}: circuit breaker open after repeated failures; next probe in {wait:.0f}s",
                          retry_after=max(wait, 0.5), provider=provider) from None


def remaining_open_s(breaker: pybreaker.CircuitBreaker) -> float:
    opened = breaker._state_storage.opened_at
    if not opened:
        return 0.0
    if opened.tzinfo is None:
        opened = opened.replace(tzinfo=UTC)
    return max(0.0, breaker.reset_timeout - (datetime.now(UTC) - opened).total_seconds())


def state(provider: str) -> tuple[str, int]:
    breaker = get_breaker(provider, get_settings().redis_url)
    return breaker.current_state, breaker.fail_counter
