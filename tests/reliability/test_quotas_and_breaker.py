from __future__ import annotations

import time

import pybreaker
import pytest

from stockpulse.config import reset_settings
from stockpulse.errors import PermanentError, TransientError
from stockpulse.reliability import breaker, quotas


@pytest.fixture()
def settings_env(monkeypatch: pytest.MonkeyPatch):
    def apply(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        reset_settings()
        breaker.get_breaker.cache_clear()

    yield apply
    monkeypatch.undo()
    reset_settings()
    breaker.get_breaker.cache_clear()


def test_quota_is_shared_through_redis_and_says_when_a_slot_frees(settings_env, redis_client) -> None:
    settings_env(STOCKPULSE_PROVIDERS__COINBASE__RATE_LIMIT="3/minute")
    quotas.reset("coinbase")
    for _ in range(3):
        quotas.acquire("coinbase")
    with pytest.raises(quotas.QuotaWait) as info:
        quotas.acquire("coinbase")
    assert 0 < info.value.retry_after <= 60
    status = quotas.status("coinbase")
    assert status.limit == "3/minute" and status.remaining == 0
    assert any(k.startswith(b"stockpulse:quota") for k in redis_client.keys("stockpulse:quota*"))
    quotas.reset("coinbase")


def test_breaker_opens_on_consecutive_transient_failures_only(settings_env, redis_client) -> None:
    settings_env(STOCKPULSE_PROVIDERS__POLYGON__BREAKER__FAIL_MAX="2",
                 STOCKPULSE_PROVIDERS__POLYGON__BREAKER__RESET_TIMEOUT_S="3")
    for key in redis_client.scan_iter("stockpulse:breaker:polygon*"):
        redis_client.delete(key)

    def fail(exc: Exception):
        def call():
            raise exc
        return call

    for _ in range(3):  # permanent errors say nothing about the provider's health
        with pytest.raises(PermanentError):
            breaker.call("polygon", fail(PermanentError("bad key")))
    assert breaker.state("polygon")[0] == pybreaker.STATE_CLOSED
    for _ in range(2):
        with pytest.raises(TransientError):
            breaker.call("polygon", fail(TransientError("HTTP 503")))
    assert breaker.state("polygon")[0] == pybreaker.STATE_OPEN
    with pytest.raises(breaker.BreakerOpen) as info:
        breaker.call("polygon", lambda: "never called")
    assert info.value.retry_after > 0
    time.sleep(3.1)  # pybreaker keeps opened_at in whole seconds in Redis
    assert breaker.call("polygon", lambda: "probe") == "probe"  # half-open probe succeeds
    assert breaker.state("polygon")[0] == pybreaker.STATE_CLOSED
