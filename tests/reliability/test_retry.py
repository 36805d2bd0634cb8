from __future__ import annotations

import email.utils
import time

import pytest

from stockpulse.config import StagePolicy
from stockpulse.errors import PermanentError, TransientError, classify, parse_retry_after
from stockpulse.reliability.retry import backoff_delay, record_failure, reset_failures, stage_policy

POLICY = StagePolicy(max_retries=5, backoff_base_s=1.0, backoff_cap_s=30.0, soft_time_limit_s=10, time_limit_s=20)


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (20, 30.0)]:
        delays = [backoff_delay(failures, POLICY) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_without_jitter_the_delay_is_exact() -> None:
    from dataclasses import replace

    assert backoff_delay(3, replace(POLICY, jitter=False)) == 4.0


def test_retry_after_is_a_floor_and_too_long_a_wait_fails_now() -> None:
    assert backoff_delay(1, POLICY, retry_after=12.5) == 12.5
    assert backoff_delay(1, POLICY, retry_after=3600) is None


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after("garbage") is None


def test_provider_overrides_apply_to_fetch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.config import reset_settings

    monkeypatch.setenv("STOCKPULSE_PROVIDERS__POLYGON__RETRY__MAX_RETRIES", "9")
    monkeypatch.setenv("STOCKPULSE_PROVIDERS__POLYGON__RETRY__BACKOFF_CAP_S", "4")
    reset_settings()
    try:
        assert stage_policy("fetch", "polygon").max_retries == 9
        assert stage_policy("fetch", "polygon").backoff_cap_s == 4
        assert stage_policy("load", "polygon").max_retries == 3  # the test config's stage policy
        assert stage_policy("fetch", "alpaca").max_retries == 3
    finally:
        monkeypatch.undo()
        reset_settings()


def test_failures_are_counted_per_stage_of_a_batch(redis_client) -> None:
    reset_failures("r1", 0, "fetch")
    assert [record_failure("r1", 0, "fetch") for _ in range(3)] == [1, 2, 3]
    assert record_failure("r1", 0, "load") == 1
    reset_failures("r1", 0, "fetch")
    reset_failures("r1", 0, "load")


def test_classification_of_database_errors() -> None:
    import sqlalchemy.exc as sa_exc

    lost = sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    dup = sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key value"))
    assert isinstance(classify(lost), TransientError)
    assert isinstance(classify(dup), PermanentError)


def test_classification_of_websocket_errors() -> None:
    import websocket

    assert isinstance(classify(websocket.WebSocketConnectionClosedException("closed")), TransientError)
    assert isinstance(classify(websocket.WebSocketTimeoutException("silent")), TransientError)
    assert isinstance(classify(websocket.WebSocketBadStatusException("Handshake status %d", 503)), TransientError)
    assert isinstance(classify(websocket.WebSocketBadStatusException("Handshake status %d", 401)), PermanentError)
    assert isinstance(classify(websocket.WebSocketProtocolException("bad frame")), PermanentError)


def test_classification_of_http_and_network_errors() -> None:
    import requests

    response = requests.Response()
    response.status_code, response.headers["Retry-After"] = 429, "3"
    throttled = classify(requests.HTTPError(response=response))
    assert isinstance(throttled, TransientError) and throttled.retry_after == 3.0
    response.status_code = 404
    assert isinstance(classify(requests.HTTPError(response=response)), PermanentError)
    assert isinstance(classify(requests.ConnectTimeout("connect")), TransientError)
    assert isinstance(classify(ConnectionResetError("reset")), TransientError)
