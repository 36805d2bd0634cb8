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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from stockpulse.errors import ConfigError

ENV_PREFIX = "STOCKPULSE_"
# Variables with our prefix that are not configuration keys.
RESERVED_ENV = {"STOCKPULSE_CONFIG", "STOCKPULSE_HOME"}
RESERVED_ENV_PREFIXES = ("STOCKPULSE_TEST_",)
SECRET_KEYS = {"api_key", "api_secret", "password", "dsn", "token", "basic_auth"}
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
                 "status_interval_s": 5},
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
    symbols: tuple[str, ...]
    interval: str = "1d"
    queue: str = "historical"
    enabled: bool = True
    batch_size: int = 50
    options: dict[str, Any] = field(default_factory=dict)


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
    symbols: dict[str, tuple[str, ...]]
    pipelines: dict[str, PipelineSettings]
    sim: dict[str, Any]
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


class StagePolicySchema(_Strict):
    max_retries = fields.Integer(required=True, validate=validate.Range(min=0, max=100))
    backoff_base_s = fields.Float(required=True, validate=validate.Range(min=0))
    backoff_cap_s = fields.Float(required=True, validate=validate.Range(min=0))
    soft_time_limit_s = fields.Integer(required=True, validate=validate.Range(min=1))
    time_limit_s = fields.Integer(required=True, validate=validate.Range(min=1))
    jitter = fields.Boolean(load_default=True)

    @validates_schema
    def _limits(self, data: dict, **_: Any) -> None:
        if data["time_limit_s"] <= data["soft_time_limit_s"]:
            raise ValidationError("time_limit_s must be greater than soft_time_limit_s", "time_limit_s")

    @post_load
    def _make(self, data: dict, **_: Any) -> StagePolicy:
        return StagePolicy(**data)


class StagesSchema(_Strict):
    fetch = fields.Nested(StagePolicySchema, required=True)
    transform = fields.Nested(StagePolicySchema, required=True)
    load = fields.Nested(StagePolicySchema, required=True)


class ProviderSchema(_Strict):
    api_key = fields.String(allow_none=True)
    api_secret = fields.String(allow_none=True)
    base_url = fields.Url(allow_none=True, require_tld=False, schemes={"http", "https"})
    timeout_s = fields.Float(validate=validate.Range(min=0.1, max=600))
    connect_timeout_s = fields.Float(validate=validate.Range(min=0.1, max=120))
    max_response_bytes = fields.Integer(validate=validate.Range(min=1024))
    request_retries = fields.Integer(validate=validate.Range(min=0, max=10))
    request_backoff_s = fields.Float(validate=validate.Range(min=0))
    request_backoff_cap_s = fields.Float(validate=validate.Range(min=0, max=60))
    rate_limit = fields.String(allow_none=True, validate=validate.Regexp(
        r"^\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?$", error="rate_limit looks like '200/minute'"))
    user_agent = fields.String(allow_none=True)
    retry = fields.Nested(lambda: RetryOverrideSchema())
    breaker = fields.Nested(lambda: BreakerSchema())
    options = fields.Dict(keys=fields.String())


class RetryOverrideSchema(_Strict):
    max_retries = fields.Integer(validate=validate.Range(min=0, max=100))
    backoff_base_s = fields.Float(validate=validate.Range(min=0))
    backoff_cap_s = fields.Float(validate=validate.Range(min=0))
    jitter = fields.Boolean()


class BreakerSchema(_Strict):
    fail_max = fields.Integer(validate=validate.Range(min=1, max=1000))
    reset_timeout_s = fields.Float(validate=validate.Range(min=0.1, max=86400))


class PipelineSchema(_Strict):
    data_type = fields.String(required=True, validate=validate.OneOf(DATA_TYPES))
    provider = fields.String(required=True)
    # Either the name of a list under ``symbols`` or an inline list of tickers.
    symbols = fields.Raw(required=True)
    interval = fields.String(load_default="1d", validate=validate.OneOf(("1m", "5m", "15m", "1h", "1d")))
    queue = fields.String(validate=validate.OneOf(QUEUES))
    enabled = fields.Boolean(load_default=True)
    batch_size = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    options = fields.Dict(keys=fields.String(), load_default=dict)


class DlqSchema(_Strict):
    max_entries = fields.Integer(validate=validate.Range(min=1))
    retention_days = fields.Float(validate=validate.Range(min=0.01))


class RunsSchema(_Strict):
    stale_after_s = fields.Float(validate=validate.Range(min=60))


class MetricsSchema(_Strict):
    port = fields.Integer(validate=validate.Range(min=0, max=65535))
    address = fields.String()
    multiproc_dir = fields.String()


class ExporterSchema(_Strict):
    port = fields.Integer(validate=validate.Range(min=1, max=65535))
    address = fields.String()
    worker_timeout_s = fields.Float(validate=validate.Range(min=1))
    inspect_interval_s = fields.Float(validate=validate.Range(min=1))
    status_interval_s = fields.Float(validate=validate.Range(min=0))


class FlowerSchema(_Strict):
    address = fields.String()
    port = fields.Integer(validate=validate.Range(min=1, max=65535))
    basic_auth = fields.String(allow_none=True, validate=validate.Regexp(
        r"^[^:,\s]+:[^,\s]+(,[^:,\s]+:[^,\s]+)*$", error="basic_auth must be user:password[,user:password]"))
    max_tasks = fields.Integer(validate=validate.Range(min=100, max=1_000_000))
    url_prefix = fields.String()


class LoggingSchema(_Strict):
    level = fields.String(validate=validate.OneOf(("DEBUG", "INFO", "WARNING", "ERROR")))
    format = fields.String(validate=validate.OneOf(("json", "console")))


class SettingsSchema(_Strict):
    environment = fields.String(required=True)
    database_url = fields.String(required=True, validate=validate.Regexp(
        r"^(sqlite|postgresql)(\+\w+)?://", error="database_url must be a sqlite:// or postgresql:// URL"))
    redis_url = fields.String(required=True, validate=validate.Regexp(
        r"^rediss?://", error="redis_url must be a redis:// or rediss:// URL"))
    timezone = fields.String(required=True, validate=_timezone)
    var_dir = fields.String(required=True)
    beat_schedule_path = fields.String(required=True)
    celery = fields.Dict(keys=fields.String(), required=True)
    payloads = fields.Dict(keys=fields.String(), required=True)
    dlq = fields.Nested(lambda: DlqSchema(), required=True)
    runs = fields.Nested(lambda: RunsSchema(), required=True)
    metrics = fields.Nested(lambda: MetricsSchema(), required=True)
    exporter = fields.Nested(lambda: ExporterSchema(), required=True)
    flower = fields.Nested(lambda: FlowerSchema(), required=True)
    stages = fields.Nested(StagesSchema, required=True)
    logging = fields.Nested(LoggingSchema, required=True)
    providers = fields.Dict(keys=fields.String(), values=fields.Nested(ProviderSchema), required=True)
    symbols = fields.Dict(keys=fields.String(), values=fields.List(fields.String(validate=_ticker)),
                          required=True)
    pipelines = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z][a-z0-9_]*$")),
                            values=fields.Nested(PipelineSchema), required=True)
    sim = fields.Dict(keys=fields.String(), required=True)

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
    symbols = {name: tuple(items) for name, items in data["symbols"].items()}
    providers = {
        name: ProviderSettings(name=name, **values) for name, values in data["providers"].items()
    }
    pipelines: dict[str, PipelineSettings] = {}
    problems: list[str] = []
    for name, raw in data["pipelines"].items():
        sym_spec = raw["symbols"]
        path = f"pipelines.{name}.symbols"
        if isinstance(sym_spec, str):
            if sym_spec not in symbols:
                problems.append(f"{path}: names symbol list {sym_spec!r}, which is not defined under "
                                f"'symbols' (from {_origin(path, origins)})")
                continue
            resolved = symbols[sym_spec]
        elif isinstance(sym_spec, list) and all(isinstance(s, str) for s in sym_spec):
            bad = [s for s in sym_spec if not TICKER_PATTERN.match(s)]
            if bad:
                problems.append(f"{path}: invalid symbol {bad[0]!r} (from {_origin(path, origins)})")
                continue
            resolved = tuple(sym_spec)
        else:
            problems.append(f"{path}: must be a symbol list name or a list of tickers "
                            f"(from {_origin(path, origins)})")
            continue
        pipelines[name] = PipelineSettings(
            name=name,
            data_type=raw["data_type"],
            provider=raw["provider"],
            symbols=resolved,
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
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


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


def redact_url(url: str) -> str:
    """Hide a password in a URL such as postgresql://user:secret@host/db."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


_SECRET_PARAMS = re.compile(r"(?i)\b(apikey|api_key|apiKey|token|secret|password)=([^&\s'\"]+)")


def known_secrets(settings: Settings | None = None) -> list[str]:
    settings = settings or get_settings()
    values = []
    for provider in settings.providers.values():
        values += [v for v in (provider.api_key, provider.api_secret) if v and len(v) >= 4]
    for url in (settings.database_url, settings.redis_url):
        match = re.search(r"://[^:/@]*:([^@]+)@", url)
        if match:
            values.append(match.group(1))
    for pair in (settings.flower.get("basic_auth") or "").split(","):
        if len(password := pair.partition(":")[2]) >= 4:
            values.append(password)
    return sorted(set(values), key=len, reverse=True)


def redact_text(text: str, settings: Settings | None = None) -> str:
    """Remove configured secrets and key-looking query parameters from text bound for a log or a store."""
    try:
        secrets = known_secrets(settings)
    except ConfigError:
        secrets = []
    for value in secrets:
        text = text.replace(value, "***")
    return _SECRET_PARAMS.sub(r"\1=***", text)


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
