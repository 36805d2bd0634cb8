"""What every provider module builds on: its registry entry, its HTTP client and its fetchers.

A provider module declares one :class:`ProviderSpec` with a fetcher class per data type it supplies
(OpenBB-style: ``extract`` talks to the provider, ``transform`` turns its pages into canonical records).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, ClassVar, Protocol
from zoneinfo import ZoneInfo

import orjson
import requests

from stockpulse import __version__
from stockpulse.config import ProviderSettings
from stockpulse.errors import TRANSIENT_HTTP_STATUSES, PermanentError, TransientError, parse_retry_after
from stockpulse.observability import metrics, tracing

NEW_YORK = ZoneInfo("America/New_York")
log = logging.getLogger("stockpulse.providers")


@dataclass(frozen=True)
class Query:
    """What a pipeline run asks one fetcher for."""

    symbols: tuple[str, ...]
    interval: str
    start: date
    end: date
    options: dict[str, Any] = field(default_factory=dict)
    # A window finer than days (a stream's gap fill): the fetcher asks for exactly [since, until].
    since: datetime | None = None
    until: datetime | None = None

    def window(self) -> tuple[datetime, datetime]:
        """[since, until] when given, else the whole days from start to end, in UTC."""
        return (self.since or datetime.combine(self.start, datetime.min.time(), UTC),
                self.until or datetime.combine(self.end, datetime.max.time(), UTC))


class Fetcher(ABC):
    """One provider x data type. ``extract`` returns raw, JSON-serialisable pages; ``transform`` maps them
    to canonical records, passing through anything it cannot interpret so that validation rejects it with
    a reason instead of the record vanishing."""

    data_type: ClassVar[str]

    def __init__(self, settings: ProviderSettings, client: ProviderClient | None = None):
        self.settings = settings
        self.client = client

    @abstractmethod
    def extract(self, query: Query) -> list[Any]: ...

    @abstractmethod
    def transform(self, pages: list[Any], query: Query) -> Iterator[dict[str, Any]]: ...

    def requests_needed(self, query: Query) -> int:
        """About how many provider requests ``extract`` makes for ``query`` (a backfill's quota estimate);
        one per symbol unless the provider says otherwise."""
        return len(query.symbols)


@dataclass
class StreamFrame:
    """What one websocket frame said: records to validate and load, and control information."""

    records: list[dict[str, Any]] = field(default_factory=list)
    # Records of other data types on the same connection (Alpaca's minute bars beside trades), by data type.
    extra: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    malformed: str | None = None  # the frame could not be read at all (quarantined with this reason)
    error: Exception | None = None  # the provider reported an error (auth, limits): raised by the consumer


def decode_frame(text: str, expected: type[dict] | type[list]) -> tuple[Any, StreamFrame | None]:
    """A frame's JSON value when it is the ``expected`` container, else (None, a frame marked malformed)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None, StreamFrame(malformed="frame is not valid JSON")
    if not isinstance(value, expected):
        what = "a JSON object" if expected is dict else "a JSON array of messages"
        return None, StreamFrame(malformed=f"frame is not {what}")
    return value, None


class TradeStream(ABC):
    """One provider's websocket protocol: where to connect, what to send, how to read a frame."""

    # The exchange calendar whose sessions the stream follows (silence outside them is normal); None for
    # markets that never close. A pipeline overrides it with ``options.calendar`` ("none" for 24/7).
    calendar: ClassVar[str | None] = None

    def __init__(self, settings: ProviderSettings):
        self.settings = settings

    @abstractmethod
    def url(self) -> str: ...

    def handshake(self) -> list[str]:
        """Messages sent right after connecting, before subscribing (e.g. authentication)."""
        return []

    @abstractmethod
    def subscribe(self, symbols: tuple[str, ...]) -> list[str]: ...

    @abstractmethod
    def unsubscribe(self, symbols: tuple[str, ...]) -> list[str]: ...

    @abstractmethod
    def parse(self, text: str) -> StreamFrame: ...


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    default_base_url: str
    fetchers: dict[str, type[Fetcher]]
    required_secrets: tuple[str, ...] = ()
    default_rate_limit: str | None = None
    # Raises TransientError/PermanentError for a provider's own error bodies (including HTTP-200 ones);
    # ``body`` is None when the body is not JSON (an HTML block page, a feed).
    check_response: Callable[[requests.Response, Any], None] | None = None
    # Problems with the provider's settings beyond missing secrets (e.g. SEC's required User-Agent).
    validate_settings: Callable[[ProviderSettings], list[str]] | None = None
    # Websocket streams by data type (real-time trades).
    streams: dict[str, type[TradeStream]] = field(default_factory=dict)

    def supplies(self, data_type: str) -> bool:
        return data_type in self.fetchers or data_type in self.streams

    @property
    def data_types(self) -> list[str]:
        return sorted({*self.fetchers, *self.streams})
    description: str = ""


class ResponseTooLarge(PermanentError):
    pass


class ResponseCache(Protocol):
    """Where a client keeps the responses of a fetch in progress (see ``stockpulse.pipeline.checkpoints``)."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, value: Any) -> None: ...


class ProviderClient:
    """requests.Session with connect/read timeouts, a response size cap and error classification.

    With a ``checkpoint``, every successful response is kept until the fetch completes, so a fetch that was
    interrupted (quota wait, transient failure, dead worker) resumes where it stopped instead of asking the
    provider again: requests are deterministic given the previous responses, so the same request identity
    (path and parameters, not headers) finds its saved answer.
    """

    def __init__(self, spec: ProviderSpec, settings: ProviderSettings, checkpoint: ResponseCache | None = None):
        self.spec = spec
        self.settings = settings
        self.checkpoint = checkpoint
        self.requests_resumed = 0
        # The newest response is saved only when another request follows it: a fetch that completes
        # never needs its last response again (and single-request fetches write no checkpoint at all).
        self._unsaved: tuple[str, Any] | None = None
        self.base_url = (settings.base_url or spec.default_base_url).rstrip("/")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = settings.user_agent or f"stockpulse/{__version__}"
        self.session.headers["Accept-Encoding"] = "gzip, deflate"
        self.requests_made = 0

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    def get_json(self, path: str, *, params: dict | None = None, headers: dict | None = None) -> Any:
        """One request, each attempt taking a slot of the provider's shared quota and going through its
        circuit breaker. A transient failure is retried here a few times after a short pause (as the
        providers' own clients do), so one flaky request does not restart a many-page fetch; longer waits
        are left to the stage, which re-queues instead of sleeping."""
        return self._fetch(path, params, headers, self._json_body)

    def get_text(self, path: str, *, params: dict | None = None, headers: dict | None = None) -> str:
        """Like ``get_json`` for a text body (RSS/Atom XML): quota, breaker, retries and checkpoints alike."""
        return self._fetch(path, params, headers, self._text_body)

    def _fetch(self, path: str, params: dict | None, headers: dict | None,
               parse: Callable[[requests.Response], Any]) -> Any:
        from stockpulse.reliability import breaker, quotas

        if self.checkpoint is None:
            return self._get_retrying(path, params, headers, parse, breaker, quotas)
        if self._unsaved is not None:
            self.checkpoint.put(*self._unsaved)
            self._unsaved = None
        key = orjson.dumps([path, sorted((params or {}).items())], default=str).decode()
        saved = self.checkpoint.get(key)
        if saved is not None:
            self.requests_resumed += 1
            return saved
        body = self._get_retrying(path, params, headers, parse, breaker, quotas)
        self._unsaved = (key, body)
        return body

    def _get_retrying(self, path: str, params: dict | None, headers: dict | None,
                      parse: Callable[[requests.Response], Any], breaker: Any, quotas: Any) -> Any:
        retries = self.settings.request_retries
        # One span per logical request (its HTTP attempts are the requests instrumentation's child spans).
        with tracing.span("provider.request", **{"stockpulse.provider": self.spec.name,
                                                 "url.path": self._safe_path(path)}):
            for attempt in range(retries + 1):
                try:
                    quotas.acquire(self.spec.name)
                    return breaker.call(self.spec.name,
                                        lambda: parse(self._get(path, params=params, headers=headers)))
                except quotas.QuotaWait as exc:
                    tracing.event("quota.wait", retry_after_s=exc.retry_after)
                    raise
                except breaker.BreakerOpen as exc:
                    tracing.event("breaker.rejected", retry_after_s=exc.retry_after)
                    raise
                except TransientError as exc:
                    delay = max(self.settings.request_backoff_s * (2 ** attempt), exc.retry_after or 0.0)
                    if attempt >= retries or delay > self.settings.request_backoff_cap_s:
                        raise
                    log.info("%s: request failed (%s), retrying in %.2fs (attempt %d of %d)", self.spec.name, exc,
                             delay, attempt + 2, retries + 1,
                             extra={"provider": self.spec.name, "attempt": attempt + 2, "delay_s": round(delay, 3)})
                    tracing.event("retry", attempt=attempt + 2, delay_s=round(delay, 3),
                                  error_type=type(exc).__name__)
                    time.sleep(delay)
        raise AssertionError("unreachable")

    def _json_body(self, response: requests.Response) -> Any:
        body = self._parse_json(response)
        if self.spec.check_response:
            self.spec.check_response(response, body)
        if response.status_code >= 400:
            self.raise_for_status(response, body)
        return body

    def _text_body(self, response: requests.Response) -> str:
        if self.spec.check_response:
            self.spec.check_response(response, None)
        if response.status_code >= 400:
            self.raise_for_status(response, None)
        if not response.content.strip():
            raise TransientError(f"{self.spec.name}: empty body (HTTP {response.status_code})",
                                 provider=self.spec.name)
        if response.encoding is None or "charset" not in response.headers.get("Content-Type", ""):
            return response.content.decode("utf-8", errors="replace") if not response.content.startswith(
                b"<?xml") else response.content.decode(_xml_encoding(response.content), errors="replace")
        return response.text

    def _get(self, path: str, *, params: dict | None, headers: dict | None) -> requests.Response:
        self.requests_made += 1
        began, status = time.monotonic(), "error"
        try:
            response = self._get_capped(path, params=params, headers=headers)
            status = response.status_code
            return response
        finally:
            metrics.provider_request(self.spec.name, status, time.monotonic() - began)

    def _get_capped(self, path: str, *, params: dict | None, headers: dict | None) -> requests.Response:
        try:
            response = self.session.get(
                self.url(path), params=params, headers=headers, stream=True,
                timeout=(self.settings.connect_timeout_s, self.settings.timeout_s),
            )
            limit = self.settings.max_response_bytes
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                response.close()
                raise ResponseTooLarge(f"{self.spec.name}: response of {declared} bytes exceeds the "
                                       f"{limit}-byte cap", provider=self.spec.name)
            chunks, size = [], 0
            for chunk in response.iter_content(65536):
                size += len(chunk)
                if size > limit:
                    response.close()
                    raise ResponseTooLarge(f"{self.spec.name}: response exceeds the {limit}-byte cap",
                                           provider=self.spec.name)
                chunks.append(chunk)
            response._content = b"".join(chunks)
            return response
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(f"{self.spec.name}: {type(exc).__name__} on {self._safe_path(path)}",
                                 provider=self.spec.name) from None

    def _safe_path(self, path: str) -> str:
        """The request path without its query string, which may carry an API key."""
        return path.split("?", 1)[0]

    def _parse_json(self, response: requests.Response) -> Any:
        content = response.content
        ctype = response.headers.get("Content-Type", "")
        if not content.strip():
            if response.status_code >= 400:
                self.raise_for_status(response, None)
            raise TransientError(f"{self.spec.name}: empty body (HTTP {response.status_code})",
                                 provider=self.spec.name)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
        if self.spec.check_response:
            self.spec.check_response(response, None)
        if response.status_code >= 400:
            self.raise_for_status(response, None)
        looks_html = "html" in ctype or content.lstrip()[:15].lower().startswith((b"<!doctype", b"<html"))
        what = "an HTML page" if looks_html else "a body that is not valid JSON"
        raise PermanentError(f"{self.spec.name}: expected JSON, got {what} (HTTP {response.status_code}, "
                             f"{len(content)} bytes)", provider=self.spec.name)

    def raise_for_status(self, response: requests.Response, body: Any) -> None:
        status = response.status_code
        message = _error_message(body) or response.reason or ""
        text = f"{self.spec.name}: HTTP {status}" + (f": {message}" if message else "")
        if status in TRANSIENT_HTTP_STATUSES:
            raise TransientError(text, retry_after=parse_retry_after(response.headers.get("Retry-After")),
                                 provider=self.spec.name)
        raise PermanentError(text, provider=self.spec.name)


def _xml_encoding(content: bytes) -> str:
    """The encoding an XML declaration names (SEC's Atom feeds declare ISO-8859-1), else UTF-8."""
    import codecs
    import re as _re

    match = _re.match(rb'<\?xml[^>]*encoding=["\']([A-Za-z0-9._-]+)["\']', content)
    if match:
        try:
            return codecs.lookup(match.group(1).decode()).name
        except LookupError:
            pass
    return "utf-8"


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("error", "message", "Error Message", "Information", "Note", "msg"):
            if isinstance(body.get(key), str):
                return body[key][:500]
    return None


# --------------------------------------------------------------------------------------------------
# Normalisation helpers shared by fetchers


def session_date_ts(value: Any, *, tz: ZoneInfo = NEW_YORK) -> Any:
    """A daily bar stamped at a local midnight or market open -> ISO string of its session date at 00:00 UTC.

    Values it cannot interpret (no zone, not a timestamp) come back unchanged so validation rejects them
    with a reason.
    """
    if not isinstance(value, str):
        return value
    return _session_date_iso(value, tz)


@lru_cache(maxsize=65536)  # a daily payload repeats the same few hundred timestamps for every symbol
def _session_date_iso(value: str, tz: ZoneInfo) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    day = moment.astimezone(tz).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat()


def epoch_to_iso(value: Any, *, unit: str = "s") -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    seconds = value / 1000.0 if unit == "ms" else float(value)
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return value


def daily_from_epoch(value: Any, *, unit: str = "s", tz: ZoneInfo = NEW_YORK) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return _daily_from_epoch(value, unit, tz)


@lru_cache(maxsize=65536)
def _daily_from_epoch(value: float, unit: str, tz: ZoneInfo) -> Any:
    iso = epoch_to_iso(value, unit=unit)
    return session_date_ts(iso, tz=tz) if isinstance(iso, str) else iso


def intraday_ts(value: Any, *, unit: str | None = None) -> Any:
    """Intraday bars keep their real instant, in UTC."""
    if unit:
        return epoch_to_iso(value, unit=unit)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            return value
        if moment.tzinfo is None:
            return value
        return moment.astimezone(UTC).isoformat()
    return value


def number(value: Any) -> Any:
    """Providers send numbers as strings (Alpha Vantage, Coinbase); convert what converts, keep the rest."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


class _Missing:
    """A field the provider did not send: left out of the record so validation says it is missing."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def compact_bar_record(symbol: str, interval: str, row: Any, ts: Any, source: str) -> dict[str, Any]:
    """A bar from the single-letter keys Alpaca and Polygon share (o, h, l, c, v); ``ts`` already converted.
    A row that is not an object is passed on whole, for validation to reject with a reason."""
    if not isinstance(row, dict):
        return {"symbol": symbol, "_raw": row}
    return bar_record(symbol, interval, ts, row.get("o", MISSING), row.get("h", MISSING), row.get("l", MISSING),
                      row.get("c", MISSING), row.get("v", MISSING), source)


def bar_record(symbol: Any, interval: str, ts: Any, o: Any, h: Any, low: Any, c: Any, v: Any,
               source: str) -> dict[str, Any]:
    record = {"symbol": symbol, "interval": interval, "ts": ts, "open": o, "high": h, "low": low, "close": c,
              "volume": v, "source": source}
    if MISSING in (ts, o, h, low, c, v):
        return {k: val for k, val in record.items() if val is not MISSING}
    return record
