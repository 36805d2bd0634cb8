"""Layered configuration, validated with marshmallow.

Layers, later wins: built-in defaults -> ``settings/default.yaml`` -> the YAML file named by
``STOCKPULSE_CONFIG`` -> environment variables (``STOCKPULSE_`` prefix, ``__`` for nesting, and
``<VAR>_FILE`` for secrets kept in files, as Docker secrets are). Every value remembers the layer it came
from, so a validation error names the key *and* where it was set.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from stockpulse.errors import ConfigError
from stockpulse.universes import Universe

ENV_PREFIX = "STOCKPULSE_"
# Variables with our prefix that are not configuration keys.
RESERVED_ENV = {"STOCKPULSE_CONFIG", "STOCKPULSE_HOME"}
RESERVED_ENV_PREFIXES = ("STOCKPULSE_TEST_",)
SECRET_KEYS = {"api_key", "api_secret", "password", "dsn", "token", "basic_auth", "webhook_url"}
TICKER_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{0,9}([.-][A-Z0-9]{1,10})?$")
DATA_TYPES = ("bars", "trades", "fundamentals", "news")
QUEUES = ("realtime", "historical", "fundamentals", "news", "maintenance")
DEFAULT_QUEUE = {"bars": "historical", "trades": "realtime", "fundamentals": "fundamentals", "news": "news"}


def project_root() -> Path:
    """The folder holding ``settings/`` and ``beat_schedule.yaml``: STOCKPULSE_HOME, the working
    directory when it has them, else the checkout this package was installed from."""
    if os.environ.get("STOCKPULSE_HOME"):
        return Path(os.environ["STOCKPULSE_HOME"]).resolve()
    cwd = Path.cwd()
    if (cwd / "settings" / "default.yaml").exists():
        return cwd
    return Path(__file__).resolve().parent.parent


BUILTIN_DEFAULTS: dict[str, Any] = {
    "environment": "development",
    "database_url": "sqlite:///var/stockpulse.db",
    "redis_url": "redis://127.0.0.1:6379/0",
    "timezone": "America/New_York",
    "var_dir": "var",
    "beat_schedule_path": "beat_schedule.yaml",
    "celery": {
        # Above the longest retry countdown (stages.*.backoff_cap_s), or Redis would redeliver a
        # waiting retry a second time.
        "visibility_timeout_s": 3600,
        "result_expires_s": 86400,
    },
    "payloads": {"inline_max_bytes": 65536, "ttl_s": 86400},
    "dlq": {"max_entries": 10000, "retention_days": 30},
    # A batch without any sign of life for this long lost its messages; the sweeper dead-letters it.
    "runs": {"stale_after_s": 21600},
    # Each worker serves its pipeline metrics on this port (0: off); pool processes share them through
    # files under multiproc_dir (relative to var_dir).
    "metrics": {"port": 9810, "address": "0.0.0.0", "multiproc_dir": "metrics"},
    # The Celery event exporter: a worker silent for worker_timeout_s reads as down; which queues each
    # worker consumes is asked at most every inspect_interval_s; the stockpulse_* gauges are recomputed at
    # most every status_interval_s (they read the database and Redis).
    "exporter": {"port": 9808, "address": "0.0.0.0", "worker_timeout_s": 30, "inspect_interval_s": 30,
                 "status_interval_s": 5, "run_grace_s": 1800},
    # Flower refuses to start on a non-loopback address without basic_auth ("user:password[,user:password]").
    "flower": {"address": "127.0.0.1", "port": 5555, "basic_auth": None, "max_tasks": 10000,
               "url_prefix": ""},
    "stages": {
        "fetch": {"max_retries": 5, "backoff_base_s": 2.0, "backoff_cap_s": 300.0, "soft_time_limit_s": 300,
                  "time_limit_s": 360},
        "transform": {"max_retries": 3, "backoff_base_s": 1.0, "backoff_cap_s": 60.0,
                      "soft_time_limit_s": 300, "time_limit_s": 360},
        "load": {"max_retries": 8, "backoff_base_s": 2.0, "backoff_cap_s": 300.0, "soft_time_limit_s": 600,
                 "time_limit_s": 720},
    },
    # level: the -l option of celery commands unless set here.
    "logging": {"format": "json"},
    "providers": {},
    "symbols": {},
    "pipelines": {},
    "sim": {"seed": 42},
    # Off until a DSN is set (STOCKPULSE_SENTRY__DSN_FILE for a secret file).
    "sentry": {"dsn": None, "traces_sample_rate": 0.0, "monitor_beat_tasks": True, "exclude_beat_tasks": []},
    # OpenTelemetry traces, one per pipeline run (docs/operations.md, "Tracing"); off: no SDK, no spans.
    "tracing": {"enabled": False, "endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 1.0,
                "stream_sample_ratio": 0.01, "service_name": "stockpulse", "export_timeout_s": 10},
    # The built-in notifier (stockpulse.maintenance.notify), for installs without Alertmanager.
    "notifier": {"enabled": False, "repeat_interval_s": 14400, "log": True, "webhook_url": None,
                 "runbook_base_url": "", "timeout_s": 10,
                 "email": {"host": None, "port": 587, "starttls": True, "sender": "stockpulse@localhost", "to": []}},
}


# --------------------------------------------------------------------------------------------------
# Typed settings objects


@dataclass(frozen=True)
class StagePolicy:
    max_retries: int
    backoff_base_s: float
    backoff_cap_s: float
    soft_time_limit_s: int
    time_limit_s: int
    jitter: bool = True


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    api_key: str | None = None
    api_secret: str | None = None
    base_url: str | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_response_bytes: int = 50 * 1024 * 1024
    # Quick in-place retries of one failed request before the stage's own retry takes over.
    request_retries: int = 2
    request_backoff_s: float = 0.5
    request_backoff_cap_s: float = 5.0
    rate_limit: str | None = None
    user_agent: str | None = None
    # Overrides of the fetch stage's retry policy for this provider (max_retries, backoff_*, jitter).
    retry: dict[str, Any] = field(default_factory=dict)
    # Circuit breaker: fail_max consecutive transient failures open it for reset_timeout_s.
    breaker: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineSettings:
    name: str
    data_type: str
    provider: str
    universe: Universe
    interval: str = "1d"
    queue: str = "historical"
    enabled: bool = True
    batch_size: int = 50
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols now: a universe kept in a file or table is read again (see stockpulse.universes)."""
        return self.universe.resolve()


@dataclass(frozen=True)
class Settings:
    environment: str
    database_url: str
    redis_url: str
    timezone: str
    var_dir: str
    beat_schedule_path: str
    celery: dict[str, Any]
    payloads: dict[str, Any]
    dlq: dict[str, Any]
    runs: dict[str, Any]
    metrics: dict[str, Any]
    exporter: dict[str, Any]
    flower: dict[str, Any]
    stages: dict[str, StagePolicy]
    logging: dict[str, Any]
    providers: dict[str, ProviderSettings]
    symbols: dict[str, Universe]
    pipelines: dict[str, PipelineSettings]
    sim: dict[str, Any]
    sentry: dict[str, Any]
    notifier: dict[str, Any]
    tracing: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def pipeline(self, name: str) -> PipelineSettings:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"unknown pipeline {name!r} (configured: {known})") from None

    def provider(self, name: str) -> ProviderSettings:
        return self.providers.get(name) or ProviderSettings(name=name)


# --------------------------------------------------------------------------------------------------
# Schemas


class _Strict(Schema):
    class Meta:
        unknown = RAISE


def _ticker(value: str) -> None:
    if not TICKER_PATTERN.match(value):
        raise ValidationError(
            f"invalid symbol {value!r}: tickers are upper case letters and digits, optionally one '.' or '-' "
            "class suffix (e.g. AAPL, BRK.B, BTC-USD)"
        )


def _timezone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown timezone {value!r}") from None


def _doc(text: str, default: Any = None) -> dict[str, Any]:
    """Field metadata for ``stockpulse config docs``: what the key is for, and a default the code applies
    (only where no schema or built-in default shows it)."""
    return {"description": text, **({"default": default} if default is not None else {})}


class StagePolicySchema(_Strict):
    max_retries = fields.Integer(required=True, validate=validate.Range(min=0, max=100),
                                 metadata=_doc("retries of a transient failure before the batch is dead-lettered"))
    backoff_base_s = fields.Float(required=True, validate=validate.Range(min=0),
                                  metadata=_doc("first retry delay; doubles per attempt (full jitter)"))
    backoff_cap_s = fields.Float(required=True, validate=validate.Range(min=0),
                                 metadata=_doc("longest retry delay; keep below celery.visibility_timeout_s"))
    soft_time_limit_s = fields.Integer(required=True, validate=validate.Range(min=1),
                                       metadata=_doc("the stage is interrupted (a transient error) after this"))
    time_limit_s = fields.Integer(required=True, validate=validate.Range(min=1),
                                  metadata=_doc("the worker process is killed after this; above the soft limit"))
    jitter = fields.Boolean(load_default=True, metadata=_doc("randomise retry delays (full jitter)"))

    @validates_schema
    def _limits(self, data: dict, **_: Any) -> None:
        if data["time_limit_s"] <= data["soft_time_limit_s"]:
            raise ValidationError("time_limit_s must be greater than soft_time_limit_s", "time_limit_s")

    @post_load
    def _make(self, data: dict, **_: Any) -> StagePolicy:
        return StagePolicy(**data)


class StagesSchema(_Strict):
    fetch = fields.Nested(StagePolicySchema, required=True, metadata=_doc("the fetch stage's retry policy"))
    transform = fields.Nested(StagePolicySchema, required=True,
                              metadata=_doc("the transform stage's retry policy"))
    load = fields.Nested(StagePolicySchema, required=True, metadata=_doc("the load stage's retry policy"))


class ProviderOptionsSchema(_Strict):
    """Options one provider understands; each names the providers that read it."""

    page_limit = fields.Integer(validate=validate.Range(min=1, max=10_000),
                                metadata=_doc("Alpaca: bars or trades per page, across symbols", 10_000))
    feed = fields.String(validate=validate.OneOf(("iex", "sip", "delayed_sip", "otc")),
                         metadata=_doc("Alpaca: market-data feed (`iex` on the free plan)", "iex"))
    adjustment = fields.String(validate=validate.OneOf(("raw", "split", "dividend", "all")),
                               metadata=_doc("Alpaca: corporate-action adjustment of bars", "raw"))
    stream_bars = fields.Boolean(metadata=_doc("Alpaca: also stream minute bars beside trades", True))
    adjusted = fields.Boolean(metadata=_doc("Polygon: split-adjusted aggregates", True))
    news_page_limit = fields.Integer(validate=validate.Range(min=1, max=1000),
                                     metadata=_doc("Polygon: news items per page", 1000))
    outputsize = fields.String(validate=validate.OneOf(("compact", "full")),
                               metadata=_doc("Alpha Vantage: `compact` (last 100 sessions); `full` is premium",
                                             "compact"))
    news_limit = fields.Integer(validate=validate.Range(min=1, max=1000),
                                metadata=_doc("Alpha Vantage: NEWS_SENTIMENT items per call", 1000))
    ws_url = fields.String(metadata=_doc("websocket URL of the provider's stream (Finnhub "
                                         "`wss://ws.finnhub.io`, Alpaca `wss://stream.data.alpaca.markets`, "
                                         "Coinbase `wss://ws-feed.exchange.coinbase.com`)"))
    feeds = fields.List(fields.String(), metadata=_doc(
        "RSS: feed URLs or paths under base_url; `{symbol}` makes a feed per symbol", "Yahoo Finance headlines"))


class ProviderSchema(_Strict):
    api_key = fields.String(allow_none=True, metadata=_doc("API key (Alpaca, Polygon, Alpha Vantage, Finnhub)"))
    api_secret = fields.String(allow_none=True, metadata=_doc("API secret (Alpaca)"))
    base_url = fields.Url(allow_none=True, require_tld=False, schemes={"http", "https"},
                          metadata=_doc("REST base URL; point it at the simulator for tests", "the provider's"))
    timeout_s = fields.Float(validate=validate.Range(min=0.1, max=600),
                             metadata=_doc("read timeout of every request", 30.0))
    connect_timeout_s = fields.Float(validate=validate.Range(min=0.1, max=120),
                                     metadata=_doc("connect timeout of every request", 5.0))
    max_response_bytes = fields.Integer(validate=validate.Range(min=1024),
                                        metadata=_doc("larger responses are refused", 50 * 1024 * 1024))
    request_retries = fields.Integer(validate=validate.Range(min=0, max=10),
                                     metadata=_doc("quick in-place retries of one failed request", 2))
    request_backoff_s = fields.Float(validate=validate.Range(min=0),
                                     metadata=_doc("first in-place retry delay", 0.5))
    request_backoff_cap_s = fields.Float(validate=validate.Range(min=0, max=60),
                                         metadata=_doc("longest in-place retry delay", 5.0))
    rate_limit = fields.String(allow_none=True, validate=validate.Regexp(
        r"^\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?$", error="rate_limit looks like '200/minute'"),
        metadata=_doc("requests allowed, shared by all workers through Redis (`200/minute`)",
                      "the free plan's: Alpaca 200/minute, Polygon 5/minute, Alpha Vantage 25/day, "
                      "Coinbase 10/second, Finnhub 60/minute, SEC 10/second, RSS 60/minute"))
    user_agent = fields.String(allow_none=True, metadata=_doc(
        "User-Agent header; SEC EDGAR requires a company name and contact e-mail", "stockpulse/<version>"))
    retry = fields.Nested(lambda: RetryOverrideSchema(),
                          metadata=_doc("this provider's overrides of the fetch stage's retry policy"))
    breaker = fields.Nested(lambda: BreakerSchema(), metadata=_doc("circuit breaker, state shared in Redis"))
    options = fields.Nested(ProviderOptionsSchema, metadata=_doc("provider-specific options"))


class RetryOverrideSchema(_Strict):
    max_retries = fields.Integer(validate=validate.Range(min=0, max=100),
                                 metadata=_doc("instead of stages.fetch.max_retries"))
    backoff_base_s = fields.Float(validate=validate.Range(min=0), metadata=_doc("instead of stages.fetch's"))
    backoff_cap_s = fields.Float(validate=validate.Range(min=0), metadata=_doc("instead of stages.fetch's"))
    jitter = fields.Boolean(metadata=_doc("instead of stages.fetch's"))


class BreakerSchema(_Strict):
    fail_max = fields.Integer(validate=validate.Range(min=1, max=1000),
                              metadata=_doc("consecutive transient failures that open the breaker", 5))
    reset_timeout_s = fields.Float(validate=validate.Range(min=0.1, max=86400),
                                   metadata=_doc("how long it stays open before one trial request", 60.0))


class ReconcileOptionsSchema(_Strict):
    """How a reference pipeline's bars are compared with the served ones (docs/operations.md)."""

    close_pct = fields.Float(validate=validate.Range(min=0), metadata=_doc(
        "closes further apart than this percentage of the served close are a finding", 0.5))
    volume_pct = fields.Float(allow_none=True, validate=validate.Range(min=0), metadata=_doc(
        "volumes further apart than this percentage of the larger are a finding; null skips volumes (feeds "
        "that see part of the market, such as Alpaca's IEX, differ by design)", 25.0))
    lookback_days = fields.Integer(validate=validate.Range(min=1, max=3650), metadata=_doc(
        "each run compares the bars of this many recent days", 10))


class PipelineOptionsSchema(_Strict):
    """Options of one pipeline; the stream ones apply to trades pipelines (docs/realtime.md)."""

    lookback_days = fields.Integer(validate=validate.Range(min=1),
                                   metadata=_doc("first run of a symbol starts this far back", 365))
    overlap_days = fields.Integer(validate=validate.Range(min=0),
                                  metadata=_doc("scheduled runs re-fetch this many days before the watermark "
                                                "(providers correct recent data)", 3))
    backfill_chunk_days = fields.Integer(validate=validate.Range(min=1, max=3650),
                                         metadata=_doc("days per run of `stockpulse backfill`", 365))
    calendar = fields.String(metadata=_doc(
        "exchange calendar of its sessions (`XNYS`, `XLON`…; `always`/`none` for 24/7 markets), used by gap "
        "detection, freshness and streams", "XNYS; always for Coinbase"))
    settle_hours = fields.Float(validate=validate.Range(min=0, max=72), metadata=_doc(
        "a session's daily bar is expected this long after its close (gaps, freshness)", 2.0))
    freshness_lag_s = fields.Float(validate=validate.Range(min=1), metadata=_doc(
        "ticks (and intraday bars) are overdue when the newest is older than this during a session", 300.0))
    quality = fields.Dict(keys=fields.String(), values=fields.Dict(), metadata=_doc(
        "data-quality checks: `{price_spike: {severity: error, threshold: 8}, stale_close: {severity: off}}` "
        "(docs/operations.md, \"Data quality\")"))
    reference = fields.Boolean(metadata=_doc(
        "bars only: load into `reference_bars` (per source), to be compared with the served `bars` of another "
        "provider by the reconciliation task, instead of into `bars`", False))
    reconcile = fields.Nested(ReconcileOptionsSchema, metadata=_doc("reference pipelines: comparison tolerances"))
    backfill_queue = fields.String(validate=validate.OneOf(QUEUES), metadata=_doc(
        "queue of a stream pipeline's REST runs (gap fills, backfills)", "historical"))
    shard_size = fields.Integer(validate=validate.Range(min=1), metadata=_doc("stream: symbols per connection"))
    flush_ms = fields.Float(validate=validate.Range(min=1), metadata=_doc("stream: commit ticks at least this often"))
    flush_max = fields.Integer(validate=validate.Range(min=1), metadata=_doc("stream: most ticks per commit"))
    silence_s = fields.Float(validate=validate.Range(min=0.1), metadata=_doc(
        "stream: no frame for this long during a session means a dead connection"))
    ping_s = fields.Float(validate=validate.Range(min=0.1), metadata=_doc("stream: websocket ping interval"))
    lease_ttl_s = fields.Float(validate=validate.Range(min=0.5), metadata=_doc(
        "stream: a shard's lease; another worker takes a dead consumer's shard over after it"))
    backoff_base_s = fields.Float(validate=validate.Range(min=0), metadata=_doc("stream: first reconnect delay"))
    backoff_cap_s = fields.Float(validate=validate.Range(min=0), metadata=_doc("stream: longest reconnect delay"))
    max_session_s = fields.Float(validate=validate.Range(min=1), metadata=_doc(
        "stream: a consumer ends after this and the supervisor starts a fresh one"))
    max_backlog = fields.Integer(validate=validate.Range(min=1), metadata=_doc(
        "stream: ticks held in memory awaiting their commit; more are spilled to Redis"))
    config_check_s = fields.Float(validate=validate.Range(min=0.1), metadata=_doc(
        "stream: how often the symbol list is re-read (subscribe/unsubscribe without a restart)"))
    gap_margin_s = fields.Float(validate=validate.Range(min=0), metadata=_doc(
        "stream: a gap fill asks for this much more on both sides"))
    gap_fill_max_s = fields.Float(validate=validate.Range(min=0), metadata=_doc(
        "stream: longer gaps are reported, not filled over REST"))


class PipelineSchema(_Strict):
    data_type = fields.String(required=True, validate=validate.OneOf(DATA_TYPES), metadata=_doc("what it loads"))
    provider = fields.String(required=True, metadata=_doc("a provider supplying the data type"))
    symbols = fields.Raw(required=True, metadata={**_doc(
        "the name of a universe under `symbols`, or an inline list of tickers"), "type": "name or list"})
    interval = fields.String(load_default="1d", validate=validate.OneOf(("1m", "5m", "15m", "1h", "1d")),
                             metadata=_doc("bar interval"))
    queue = fields.String(validate=validate.OneOf(QUEUES), metadata=_doc(
        "Celery queue of its tasks", "the data type's: bars historical, trades realtime, news, fundamentals"))
    enabled = fields.Boolean(load_default=True, metadata=_doc(
        "disabled pipelines are not scheduled, streamed or required to have keys"))
    batch_size = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000),
                                metadata=_doc("symbols per fetch → transform → load chain"))
    options = fields.Nested(PipelineOptionsSchema, load_default=dict, metadata=_doc("pipeline options"))

    @validates_schema
    def _reference_bars_only(self, data: dict, **_: Any) -> None:
        if data.get("options", {}).get("reference") and data["data_type"] != "bars":
            raise ValidationError("only bars pipelines can be reference pipelines", "options")


class CelerySchema(_Strict):
    visibility_timeout_s = fields.Integer(validate=validate.Range(min=1), metadata=_doc(
        "Redis redelivers a message unacked this long; above every stages.*.backoff_cap_s"))
    unacked_restore_interval_s = fields.Integer(validate=validate.Range(min=1), metadata=_doc(
        "how often workers look for the messages of dead workers", 10))
    result_expires_s = fields.Integer(validate=validate.Range(min=60), metadata=_doc("task results kept this long"))
    beat_lock_timeout_s = fields.Integer(validate=validate.Range(min=5), metadata=_doc(
        "RedBeat's lock: a second beat waits; it takes over this long after the first died", 150))
    beat_max_loop_interval_s = fields.Integer(validate=validate.Range(min=1), metadata=_doc(
        "beat re-reads its schedules at least this often (runtime edits take effect within it)", 30))


class PayloadsSchema(_Strict):
    inline_max_bytes = fields.Integer(validate=validate.Range(min=0), metadata=_doc(
        "larger stage payloads travel through Redis by reference"))
    ttl_s = fields.Integer(validate=validate.Range(min=60), metadata=_doc(
        "a payload by reference expires after this (deleted at once after its load)"))


class SimSchema(_Strict):
    seed = fields.Integer(metadata=_doc("seed of the simulator's deterministic prices and tapes"))
    faults = fields.Dict(keys=fields.String(), values=fields.Dict(), metadata=_doc(
        "faults per provider: `{alpaca: {rate: 0.3, kinds: [429, 503, timeout]}}`"))
    keys = fields.Dict(keys=fields.String(), metadata=_doc(
        "API keys the simulator accepts per provider (default: any)"))
    slow_s = fields.Float(validate=validate.Range(min=0), metadata=_doc("delay of a `slow` fault", 3.0))
    premium = fields.Boolean(metadata=_doc("Alpha Vantage premium features (`outputsize=full`) allowed", False))


class DlqSchema(_Strict):
    max_entries = fields.Integer(validate=validate.Range(min=1), metadata=_doc(
        "dead letters kept; the oldest go first"))
    retention_days = fields.Float(validate=validate.Range(min=0.01), metadata=_doc("dead letters older go"))


class RunsSchema(_Strict):
    stale_after_s = fields.Float(validate=validate.Range(min=60), metadata=_doc(
        "a batch with no sign of life this long is dead-lettered by the sweeper"))


class MetricsSchema(_Strict):
    port = fields.Integer(validate=validate.Range(min=0, max=65535), metadata=_doc(
        "each worker's Prometheus endpoint (0: off)"))
    address = fields.String(metadata=_doc("address it listens on"))
    multiproc_dir = fields.String(metadata=_doc("where pool processes share their metrics, under var_dir"))


class ExporterSchema(_Strict):
    port = fields.Integer(validate=validate.Range(min=1, max=65535), metadata=_doc(
        "`stockpulse exporter`'s Prometheus endpoint"))
    address = fields.String(metadata=_doc("address it listens on"))
    worker_timeout_s = fields.Float(validate=validate.Range(min=1), metadata=_doc(
        "a worker silent this long reads as down"))
    inspect_interval_s = fields.Float(validate=validate.Range(min=1), metadata=_doc(
        "how often workers are asked which queues they consume"))
    status_interval_s = fields.Float(validate=validate.Range(min=0), metadata=_doc(
        "the stockpulse_* gauges re-read the database and Redis at most this often"))
    run_grace_s = fields.Float(validate=validate.Range(min=0), metadata=_doc(
        "a scheduled run has this long to succeed before its pipeline counts as having missed it"))


class FlowerSchema(_Strict):
    address = fields.String(metadata=_doc("a non-loopback address requires basic_auth"))
    port = fields.Integer(validate=validate.Range(min=1, max=65535), metadata=_doc("Flower's port"))
    basic_auth = fields.String(allow_none=True, validate=validate.Regexp(
        r"^[^:,\s]+:[^,\s]+(,[^:,\s]+:[^,\s]+)*$", error="basic_auth must be user:password[,user:password]"),
        metadata=_doc("`user:password[,user:password]`"))
    max_tasks = fields.Integer(validate=validate.Range(min=100, max=1_000_000), metadata=_doc(
        "tasks kept in Flower's memory"))
    url_prefix = fields.String(metadata=_doc("path prefix behind a reverse proxy"))


class LoggingSchema(_Strict):
    level = fields.String(validate=validate.OneOf(("DEBUG", "INFO", "WARNING", "ERROR")), metadata=_doc(
        "log level", "the -l option of celery commands"))
    format = fields.String(validate=validate.OneOf(("json", "console")), metadata=_doc(
        "`json`: one JSON object per line with run/task ids; `console` for development"))


class SentrySchema(_Strict):
    dsn = fields.String(allow_none=True, metadata=_doc("Sentry DSN; Sentry is off without one"))
    release = fields.String(allow_none=True, metadata=_doc("release tag of events", "stockpulse@<version>"))
    server_name = fields.String(allow_none=True, metadata=_doc("host name on events", "the host's"))
    traces_sample_rate = fields.Float(validate=validate.Range(min=0, max=1), metadata=_doc(
        "share of tasks traced as Sentry performance transactions"))
    monitor_beat_tasks = fields.Boolean(metadata=_doc("every beat schedule is a Sentry cron monitor"))
    exclude_beat_tasks = fields.List(fields.String(), metadata=_doc(
        "schedule names (or regular expressions) not to monitor, e.g. `supervise-streams`"))


class TracingSchema(_Strict):
    enabled = fields.Boolean(metadata=_doc("export OpenTelemetry traces; off, the SDK is not even loaded"))
    endpoint = fields.String(metadata=_doc("OTLP/HTTP traces endpoint of the collector"))
    sample_ratio = fields.Float(validate=validate.Range(min=0, max=1), metadata=_doc(
        "share of pipeline runs traced, decided once per run at its trigger and followed by every stage"))
    stream_sample_ratio = fields.Float(validate=validate.Range(min=0, max=1), metadata=_doc(
        "share of stream commits traced, each a trace of its own (a shard commits about once a second: "
        "a run is minutes apart)"))
    service_name = fields.String(validate=validate.Length(min=1), metadata=_doc(
        "service name prefix; each process type appends its own: `-worker` (stages and stream consumers), "
        "`-cli` (commands that start runs)"))
    export_timeout_s = fields.Float(validate=validate.Range(min=0.1), metadata=_doc("OTLP export timeout"))


class EmailSinkSchema(_Strict):
    host = fields.String(allow_none=True, metadata=_doc("SMTP relay; no e-mail without one"))
    port = fields.Integer(validate=validate.Range(min=1, max=65535), metadata=_doc("SMTP port"))
    starttls = fields.Boolean(metadata=_doc("upgrade the connection with STARTTLS"))
    username = fields.String(allow_none=True, metadata=_doc("SMTP login, when the relay wants one"))
    password = fields.String(allow_none=True, metadata=_doc("SMTP password"))
    sender = fields.String(metadata=_doc("From address"))
    to = fields.List(fields.String(), metadata=_doc("recipients"))


class NotifierSchema(_Strict):
    enabled = fields.Boolean(metadata=_doc("evaluate and send alerts (the `notify` schedule, every minute)"))
    repeat_interval_s = fields.Float(validate=validate.Range(min=1), metadata=_doc(
        "a firing alert is sent again this often"))
    log = fields.Boolean(metadata=_doc("write each alert to the log (level WARNING firing, INFO resolved)"))
    webhook_url = fields.String(allow_none=True, metadata=_doc(
        "Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat)"))
    runbook_base_url = fields.String(metadata=_doc("prefix of the runbook links (where docs/ is browsable)"))
    timeout_s = fields.Float(validate=validate.Range(min=0.1, max=120), metadata=_doc("per delivery"))
    email = fields.Nested(EmailSinkSchema, metadata=_doc("e-mail sink"))


class SettingsSchema(_Strict):
    environment = fields.String(required=True, metadata=_doc("tags logs, metrics and Sentry events"))
    database_url = fields.String(required=True, validate=validate.Regexp(
        r"^(sqlite|postgresql)(\+\w+)?://", error="database_url must be a sqlite:// or postgresql:// URL"),
        metadata=_doc("`sqlite:///…` (relative to the project root) or `postgresql://…` (psycopg 3)"))
    redis_url = fields.String(required=True, validate=validate.Regexp(
        r"^rediss?://", error="redis_url must be a redis:// or rediss:// URL"),
        metadata=_doc("broker, RedBeat, payloads, quotas, DLQ"))
    timezone = fields.String(required=True, validate=_timezone, metadata=_doc(
        "Celery's timezone: crons in beat_schedule.yaml run in it"))
    var_dir = fields.String(required=True, metadata=_doc("runtime files: SQLite, private Redis, logs"))
    beat_schedule_path = fields.String(required=True, metadata=_doc("the file beat seeds RedBeat from"))
    celery = fields.Nested(CelerySchema, required=True, metadata=_doc("Celery"))
    payloads = fields.Nested(PayloadsSchema, required=True, metadata=_doc("stage payloads"))
    dlq = fields.Nested(lambda: DlqSchema(), required=True, metadata=_doc("dead-letter queue"))
    runs = fields.Nested(lambda: RunsSchema(), required=True, metadata=_doc("run bookkeeping"))
    metrics = fields.Nested(lambda: MetricsSchema(), required=True, metadata=_doc("worker metrics"))
    exporter = fields.Nested(lambda: ExporterSchema(), required=True, metadata=_doc("Celery-event exporter"))
    flower = fields.Nested(lambda: FlowerSchema(), required=True, metadata=_doc("Flower"))
    stages = fields.Nested(StagesSchema, required=True, metadata=_doc("retry policy per stage"))
    logging = fields.Nested(LoggingSchema, required=True, metadata=_doc("logging"))
    providers = fields.Dict(keys=fields.String(), values=fields.Nested(ProviderSchema), required=True,
                            metadata=_doc("providers by name: alpaca, polygon, alphavantage, coinbase, "
                                          "finnhub, sec, rss"))
    symbols = fields.Dict(keys=fields.String(), values=fields.Raw(), required=True, metadata={"type": "list or mapping", "per_name": True, **_doc(
        "a named symbol universe: a list of tickers, `{file: path}` (one per line, or CSV with a `symbol` "
        "column; relative to the project root) or `{table: name, column: symbol}` (a database table); a "
        "file or table is read again by every run")})
    pipelines = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z][a-z0-9_]*$")),
                            values=fields.Nested(PipelineSchema), required=True,
                            metadata=_doc("pipelines by name"))
    sim = fields.Nested(SimSchema, required=True, metadata=_doc("the loopback simulator (`stockpulse sim serve`)"))
    sentry = fields.Nested(SentrySchema, required=True, metadata=_doc("error reporting and cron monitors"))
    tracing = fields.Nested(TracingSchema, required=True, metadata=_doc("OpenTelemetry traces"))
    notifier = fields.Nested(NotifierSchema, required=True, metadata=_doc("the built-in notifier"))

    @validates_schema
    def _visibility_above_countdowns(self, data: dict, **_: Any) -> None:
        # Redis redelivers any message unacked for longer than the visibility timeout, including a retry
        # waiting out its countdown in a worker: that would run the stage twice.
        visibility = data["celery"].get("visibility_timeout_s", 3600)
        caps = [policy.backoff_cap_s for policy in data["stages"].values()]
        caps += [p["retry"]["backoff_cap_s"] for p in data["providers"].values() if "backoff_cap_s" in p.get("retry", {})]
        longest = max(caps)
        if not isinstance(visibility, (int, float)) or visibility <= longest:
            raise ValidationError(f"must be greater than the longest retry countdown (stages.*.backoff_cap_s = "
                                  f"{longest:g}s), got {visibility!r}", "celery.visibility_timeout_s")


# --------------------------------------------------------------------------------------------------
# Loading


def _merge(base: dict, overlay: Mapping, origins: dict[str, str], source: str, prefix: str = "") -> None:
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, origins, source, path + ".")
        else:
            base[key] = copy.deepcopy(value)
            origins[path] = source
            if isinstance(value, Mapping):
                for sub in _paths(value, path + "."):
                    origins[sub] = source


def _paths(mapping: Mapping, prefix: str) -> list[str]:
    out = []
    for key, value in mapping.items():
        out.append(prefix + str(key))
        if isinstance(value, Mapping):
            out.extend(_paths(value, f"{prefix}{key}."))
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def _env_layer(environ: Mapping[str, str]) -> tuple[dict, dict[str, str]]:
    """Turn STOCKPULSE_A__B=1 into {"a": {"b": 1}}; values are parsed as YAML scalars."""
    layer: dict = {}
    sources: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
            continue
        raw = environ[name]
        key_name = name
        if name.endswith("_FILE"):
            key_name = name[: -len("_FILE")]
            try:
                raw = Path(raw).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{name}: cannot read secret file {raw!r}: {exc.strerror}") from None
            value: Any = raw
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
        parts = [p.lower() for p in key_name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        if parts[-1] in SECRET_KEYS or parts[-1].endswith("_url"):
            value = raw  # secrets and URLs stay strings, whatever they look like
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another variable setting {part!r} to a value")
        node[parts[-1]] = value
        sources[".".join(parts)] = f"environment variable {name}"
    return layer, sources


def _flatten_errors(messages: Any, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "value" and prefix:  # marshmallow's Dict(values=...) nests errors under "value"
                out.extend(_flatten_errors(value, prefix))
            elif key == "key" and prefix:
                out.extend(_flatten_errors(value, prefix))
            elif key == "_schema":
                out.extend(_flatten_errors(value, prefix))
            else:
                out.extend(_flatten_errors(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            out.append((prefix, " ".join(messages)))
        else:
            for i, item in enumerate(messages):
                out.extend(_flatten_errors(item, f"{prefix}.{i}"))
    else:
        out.append((prefix, str(messages)))
    return out


def _origin(path: str, origins: dict[str, str]) -> str:
    probe = path
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return "built-in defaults"


def load_settings(environ: Mapping[str, str] | None = None, *, root: Path | None = None,
                  check_secrets: bool = False) -> Settings:
    """Merge every layer, validate, and return typed settings; raises ConfigError naming key and source.

    ``check_secrets`` also requires the API keys of enabled pipelines: workers, beat and ``config check``
    ask for it; clients that only enqueue or read (``runs``, ``celery call``) do not need the keys.
    """
    environ = os.environ if environ is None else environ
    root = root or project_root()
    origins: dict[str, str] = {}
    merged: dict = {}
    _merge(merged, BUILTIN_DEFAULTS, origins, "built-in defaults")
    default_file = root / "settings" / "default.yaml"
    if default_file.exists():
        _merge(merged, _read_yaml(default_file), origins, str(default_file))
    if environ.get("STOCKPULSE_CONFIG"):
        path = Path(environ["STOCKPULSE_CONFIG"])
        if not path.is_absolute():
            path = (Path.cwd() / path).resolve()
        if not path.exists():
            raise ConfigError(f"STOCKPULSE_CONFIG names {path}, which does not exist")
        _merge(merged, _read_yaml(path), origins, str(path))
    env_layer, env_sources = _env_layer(environ)
    _merge(merged, env_layer, {}, "")
    origins.update(env_sources)
    # STOCKPULSE_DATABASE_URL / STOCKPULSE_REDIS_URL arrive through the same mechanism as any key.

    try:
        data = SettingsSchema().load(merged)
    except ValidationError as exc:
        problems = [
            f"{path or '(top level)'}: {message} (from {_origin(path, origins)})"
            for path, message in _flatten_errors(exc.messages)
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None

    settings = _build(data, origins, root)
    _check_references(settings)
    if check_secrets:
        require_secrets(settings)
    return settings


def _build(data: dict, origins: dict[str, str], root: Path) -> Settings:
    from stockpulse.universes import from_config

    problems: list[str] = []
    symbols: dict[str, Universe] = {}
    for name, spec in data["symbols"].items():
        bad = [(i, s) for i, s in enumerate(spec) if not TICKER_PATTERN.match(str(s))] if isinstance(spec, list) else []
        if bad:
            problems.append(f"symbols.{name}.{bad[0][0]}: invalid symbol {bad[0][1]!r}: tickers are upper case "
                            "letters and digits, optionally one '.' or '-' class suffix (e.g. AAPL, BRK.B, BTC-USD) "
                            f"(from {_origin('symbols.' + name, origins)})")
            continue
        try:
            symbols[name] = from_config(name, spec, root)
        except ConfigError as exc:
            problems.append(f"symbols.{name}: {exc} (from {_origin('symbols.' + name, origins)})")
    providers = {
        name: ProviderSettings(name=name, **values) for name, values in data["providers"].items()
    }
    pipelines: dict[str, PipelineSettings] = {}
    for name, raw in data["pipelines"].items():
        sym_spec = raw["symbols"]
        path = f"pipelines.{name}.symbols"
        if isinstance(sym_spec, str):
            if sym_spec not in symbols:
                if sym_spec not in data["symbols"]:
                    problems.append(f"{path}: names symbol list {sym_spec!r}, which is not defined under "
                                    f"'symbols' (from {_origin(path, origins)})")
                continue
            universe = symbols[sym_spec]
        elif isinstance(sym_spec, list) and all(isinstance(s, str) for s in sym_spec):
            bad = [s for s in sym_spec if not TICKER_PATTERN.match(s)]
            if bad:
                problems.append(f"{path}: invalid symbol {bad[0]!r} (from {_origin(path, origins)})")
                continue
            universe = Universe(f"pipelines.{name}", tickers=tuple(sym_spec))
        else:
            problems.append(f"{path}: must be a symbol list name or a list of tickers "
                            f"(from {_origin(path, origins)})")
            continue
        pipelines[name] = PipelineSettings(
            name=name,
            data_type=raw["data_type"],
            provider=raw["provider"],
            universe=universe,
            interval=raw["interval"],
            queue=raw.get("queue") or DEFAULT_QUEUE[raw["data_type"]],
            enabled=raw["enabled"],
            batch_size=raw["batch_size"],
            options=raw["options"],
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    var_dir = Path(data["var_dir"])
    if not var_dir.is_absolute():
        var_dir = root / var_dir
    database_url = data["database_url"]
    # A relative SQLite path is relative to the project root, not to wherever a process happens to start.
    m = re.match(r"^sqlite(\+\w+)?:///(?!/)(.+)$", database_url)
    if m and m.group(2) != ":memory:":
        database_url = f"sqlite{m.group(1) or ''}:///{(root / m.group(2)).as_posix()}"
    return Settings(
        environment=data["environment"],
        database_url=database_url,
        redis_url=data["redis_url"],
        timezone=data["timezone"],
        var_dir=str(var_dir),
        beat_schedule_path=str(root / data["beat_schedule_path"]),
        celery=data["celery"],
        payloads=data["payloads"],
        dlq=data["dlq"],
        runs=data["runs"],
        metrics=data["metrics"],
        exporter=data["exporter"],
        flower=data["flower"],
        stages=data["stages"],
        logging=data["logging"],
        providers=providers,
        symbols=symbols,
        pipelines=pipelines,
        sim=data["sim"],
        sentry=data["sentry"],
        notifier=data["notifier"],
        tracing=data["tracing"],
        origins=origins,
    )


def _check_references(settings: Settings) -> None:
    """Cross-key checks: known providers, provider supports the data type, keys present when needed."""
    from stockpulse.providers import PROVIDERS

    problems = []
    for name in settings.providers:
        if name not in PROVIDERS:
            problems.append(f"providers.{name}: unknown provider {name!r} (known: {', '.join(sorted(PROVIDERS))}) "
                            f"(from {_origin('providers.' + name, settings.origins)})")
    for name, pipe in settings.pipelines.items():
        path = f"pipelines.{name}.provider"
        spec = PROVIDERS.get(pipe.provider)
        if spec is None:
            problems.append(f"{path}: unknown provider {pipe.provider!r} (known: {', '.join(sorted(PROVIDERS))}) "
                            f"(from {_origin(path, settings.origins)})")
            continue
        if not spec.supplies(pipe.data_type):
            problems.append(f"{path}: provider {pipe.provider!r} does not supply {pipe.data_type!r} "
                            f"(it supplies: {', '.join(spec.data_types)}) (from {_origin(path, settings.origins)})")
    problems += _overlapping_bars(settings)
    from stockpulse.quality import check_config

    problems += [f"{problem} (from {_origin(problem.split(':')[0], settings.origins)})"
                 for problem in check_config(settings.pipelines.values())]
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _overlapping_bars(settings: Settings) -> list[str]:
    """Two enabled pipelines serving ``bars`` (not reference pipelines) from different providers for the same
    symbols and interval would overwrite each other's bars, row by row, whichever loaded last. Symbols kept in
    a file or table are compared by source (the same file or table), not read here."""
    serving = [p for p in settings.pipelines.values()
               if p.enabled and p.data_type == "bars" and not p.options.get("reference")]
    problems = []
    for i, first in enumerate(serving):
        for second in serving[i + 1:]:
            if first.provider == second.provider or first.interval != second.interval:
                continue
            a, b = first.universe, second.universe
            shared = sorted(set(a.tickers) & set(b.tickers))
            same_source = (a.file is not None and a.file == b.file) or (a.table is not None and a.table == b.table)
            if not shared and not same_source:
                continue
            what = (f"symbols {', '.join(shared[:5])}{' …' if len(shared) > 5 else ''}" if shared
                    else f"the symbols of {a.describe()}")
            problems.append(
                f"pipelines.{second.name}: serves {second.interval} bars of {what} from {second.provider!r}, as "
                f"pipeline {first.name!r} does from {first.provider!r}: each would overwrite the other's bars. "
                f"Make one a second opinion (options: {{reference: true}}, compared by `stockpulse reconcile`), "
                f"disable one, or give them distinct symbols "
                f"(enabled in {_origin(f'pipelines.{second.name}.enabled', settings.origins)})")
    return problems


def require_secrets(settings: Settings) -> None:
    """Every enabled pipeline's provider has the keys it needs."""
    from stockpulse.providers import PROVIDERS

    problems = []
    for name, pipe in settings.pipelines.items():
        spec = PROVIDERS[pipe.provider]
        if not pipe.enabled:
            continue
        provider = settings.provider(pipe.provider)
        for secret in spec.required_secrets:
            if not getattr(provider, secret):
                var = f"STOCKPULSE_PROVIDERS__{pipe.provider.upper()}__{secret.upper()}"
                problems.append(f"providers.{pipe.provider}.{secret}: missing, and enabled pipeline {name!r} "
                                f"needs it (set it in a config file or {var} / {var}_FILE; "
                                "`stockpulse standalone` uses the simulator instead)")
    checked: set[str] = set()
    for pipe in settings.pipelines.values():
        spec = PROVIDERS[pipe.provider]
        if pipe.enabled and spec.validate_settings and pipe.provider not in checked:
            checked.add(pipe.provider)
            problems += spec.validate_settings(settings.provider(pipe.provider))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def redacted(settings: Settings) -> dict[str, Any]:
    """The merged configuration as plain data with every secret replaced by ``***``."""
    from dataclasses import asdict

    data = asdict(settings)
    data.pop("origins", None)
    # Universes as configured: a list, or where a file/table one is read from (not read here).
    data["symbols"] = {name: _universe_data(u) for name, u in settings.symbols.items()}
    for name, pipe in settings.pipelines.items():
        data["pipelines"][name].pop("universe")
        data["pipelines"][name]["symbols"] = _universe_data(pipe.universe)

    def scrub(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: scrub(v, k) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [scrub(v) for v in node]
        if key in SECRET_KEYS and node:
            return "***"
        if isinstance(node, str) and key.endswith("_url"):
            return redact_url(node)
        return node

    return scrub(data)


def _universe_data(universe: Universe) -> Any:
    if universe.file:
        return {"file": universe.file}
    if universe.table:
        return {"table": universe.table, "column": universe.column}
    return list(universe.tickers)


def redact_url(url: str) -> str:
    """Hide a password in a URL such as postgresql://user:secret@host/db."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


SECRET_PARAMS = re.compile(r"(?i)\b(apikey|api_key|apiKey|token|secret|password)=([^&\s'\"]+)")


def known_secrets(settings: Settings | None = None) -> list[str]:
    settings = settings or get_settings()
    values = []
    for provider in settings.providers.values():
        values += [v for v in (provider.api_key, provider.api_secret) if v and len(v) >= 4]
    for url in (settings.database_url, settings.redis_url):
        match = re.search(r"://[^:/@]*:([^@]+)@", url)
        if match:
            values.append(match.group(1))
    values += [v for v in (settings.notifier.get("webhook_url"), (settings.notifier.get("email") or {}).get("password"),
                           settings.sentry.get("dsn")) if v and len(v) >= 4]
    for pair in (settings.flower.get("basic_auth") or "").split(","):
        if len(password := pair.partition(":")[2]) >= 4:
            values.append(password)
    return sorted(set(values), key=len, reverse=True)


def redact_text(text: str, settings: Settings | None = None) -> str:
    """Remove configured secrets and key-looking query parameters from text bound for a log or a store."""
    return redactor(settings)(text)


def redactor(settings: Settings | None = None) -> Callable[[str], str]:
    """``redact_text`` with the secrets looked up once, for many strings (a batch of spans)."""
    try:
        secrets = known_secrets(settings)
    except ConfigError:
        secrets = []

    def redact(text: str) -> str:
        for value in secrets:
            if value in text:
                text = text.replace(value, "***")
        return SECRET_PARAMS.sub(r"\1=***", text) if "=" in text else text

    return redact


_settings: Settings | None = None


def get_settings() -> Settings:
    """Process-wide settings, loaded once."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def reset_settings() -> None:
    global _settings
    _settings = None
