"""Error classes and the one place where failures are classified as transient or permanent.

Every stage of every pipeline goes through :func:`classify`, so "should this retry?" has one answer.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime


class StockPulseError(Exception):
    """Base class of the project's own errors."""


class ConfigError(StockPulseError):
    """Invalid configuration. The CLI exits with code 2 on it."""

    exit_code = 2


class TransientError(StockPulseError):
    """A failure that is expected to go away: retry with backoff.

    ``retry_after`` (seconds) is the provider's own hint (``Retry-After``) and takes precedence over the
    computed backoff when it is longer.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, provider: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.provider = provider


class PermanentError(StockPulseError):
    """A failure that retrying cannot fix (bad credentials, unknown symbol, unparseable payload)."""

    def __init__(self, message: str, *, provider: str | None = None):
        super().__init__(message)
        self.provider = provider


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now; it may be delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)


TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


def classify(exc: BaseException) -> StockPulseError:
    """Map any exception met in a stage to TransientError or PermanentError.

    Imports are local so that this module stays importable without the optional drivers.
    """
    if isinstance(exc, (TransientError, PermanentError)):
        return exc
    import requests
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return TransientError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in TRANSIENT_HTTP_STATUSES:
            return TransientError(
                f"HTTP {status}", retry_after=parse_retry_after(exc.response.headers.get("Retry-After"))
            )
        return PermanentError(f"HTTP {status}")
    if isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)):
        return PermanentError(f"{type(exc).__name__}: {exc.orig!s}"[:2000])
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or getattr(
        exc, "connection_invalidated", False
    ):
        return TransientError(f"database unavailable: {type(exc).__name__}: {exc.orig!s}"[:2000])
    import redis

    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return TransientError(f"redis unavailable: {exc}")
    websocket_error = _classify_websocket(exc)
    if websocket_error is not None:
        return websocket_error
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TransientError(f"{type(exc).__name__}: {exc}")
    return PermanentError(f"{type(exc).__name__}: {exc}")


def _classify_websocket(exc: BaseException) -> StockPulseError | None:
    """websocket-client errors: a dropped or silent socket is transient; a refused handshake is transient for
    429/5xx and permanent otherwise (401/403: bad key); a malformed frame or bad URL is permanent."""
    import websocket

    if isinstance(exc, (websocket.WebSocketConnectionClosedException, websocket.WebSocketTimeoutException)):
        return TransientError(f"websocket: {type(exc).__name__}: {exc}")
    if isinstance(exc, websocket.WebSocketBadStatusException):
        status = getattr(exc, "status_code", 0) or 0
        if status in TRANSIENT_HTTP_STATUSES:
            return TransientError(f"websocket handshake refused: HTTP {status}")
        return PermanentError(f"websocket handshake refused: HTTP {status}")
    if isinstance(exc, (websocket.WebSocketAddressException, websocket.WebSocketProxyException)):
        return TransientError(f"websocket: cannot connect: {exc}")
    if isinstance(exc, (websocket.WebSocketPayloadException, websocket.WebSocketProtocolException)):
        return PermanentError(f"websocket: protocol error: {exc}")
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)
