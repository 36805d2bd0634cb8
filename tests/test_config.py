from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stockpulse.config import load_settings, redacted
from stockpulse.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def env_with(tmp_path: Path, config: dict | None = None, **env: str) -> dict[str, str]:
    result = {"STOCKPULSE_PROVIDERS__ALPACA__API_KEY": "k", "STOCKPULSE_PROVIDERS__ALPACA__API_SECRET": "s"}
    if config is not None:
        path = tmp_path / "override.yaml"
        path.write_text(yaml.safe_dump(config))
        result["STOCKPULSE_CONFIG"] = str(path)
    result.update(env)
    return result


def test_layers_later_wins(tmp_path: Path) -> None:
    environ = env_with(tmp_path, {"timezone": "Europe/London", "symbols": {"us_large_caps": ["IBM"]}},
                       STOCKPULSE_TIMEZONE="Asia/Tokyo", STOCKPULSE_PROVIDERS__ALPACA__TIMEOUT_S="7.5")
    settings = load_settings(environ, root=ROOT)
    assert settings.timezone == "Asia/Tokyo"  # env beats the file
    assert settings.pipelines["daily_bars"].symbols == ("IBM",)  # file beats default.yaml
    assert settings.provider("alpaca").timeout_s == 7.5
    assert settings.provider("alpaca").rate_limit == "200/minute"  # default.yaml kept where not overridden


def test_urls_and_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    environ = env_with(tmp_path, STOCKPULSE_DATABASE_URL="postgresql://u:pw@db/x",
                       STOCKPULSE_REDIS_URL="redis://r:6379/1",
                       STOCKPULSE_PROVIDERS__POLYGON__API_KEY_FILE=str(secret))
    settings = load_settings(environ, root=ROOT)
    assert settings.database_url == "postgresql://u:pw@db/x" and settings.redis_url == "redis://r:6379/1"
    assert settings.provider("polygon").api_key == "from-a-file"
    shown = redacted(settings)
    assert shown["providers"]["polygon"]["api_key"] == "***" and shown["database_url"] == "postgresql://u:***@db/x"


@pytest.mark.parametrize(("config", "env", "expected"), [
    ({"pipelines": {"daily_bars": {"colour": "red"}}}, {}, r"pipelines\.daily_bars\.colour: Unknown field\. \(from .*override\.yaml\)"),
    ({}, {"STOCKPULSE_PROVIDERS__ALPACA__TIMEOUT_S": "soon"},
     r"providers\.alpaca\.timeout_s: Not a valid number\. \(from environment variable STOCKPULSE_PROVIDERS__ALPACA__TIMEOUT_S\)"),
    ({"providers": {"nasdaq": {"api_key": "x"}}}, {}, r"providers\.nasdaq: unknown provider 'nasdaq'"),
    ({"pipelines": {"daily_bars": {"provider": "acme"}}}, {}, r"pipelines\.daily_bars\.provider: unknown provider 'acme'"),
    ({"symbols": {"us_large_caps": ["AAPL", "drop table"]}}, {}, r"symbols\.us_large_caps\.1: invalid symbol 'drop table'"),
    ({"timezone": "Mars/Olympus"}, {}, r"timezone: unknown timezone 'Mars/Olympus'"),
    ({"celery": {"visibility_timeout_s": 60}}, {},
     r"celery\.visibility_timeout_s: must be greater than the longest retry countdown"),
    ({}, {"STOCKPULSE_PIPELINES__DAILY_BARS__OPTIONS__QUALITY": "{price_spik: {severity: warn}}"},
     r"pipelines\.daily_bars\.options\.quality: unknown check 'price_spik' \(known: .*price_spike.*\) "
     r"\(from environment variable STOCKPULSE_PIPELINES__DAILY_BARS__OPTIONS__QUALITY\)"),
    ({"pipelines": {"daily_bars": {"options": {"quality": {"price_spike": {"severity": "loud"}}}}}}, {},
     r"quality\.price_spike\.severity: 'loud' is not one of error, warn, off \(from .*override\.yaml\)"),
    ({"pipelines": {"daily_bars": {"options": {"quality": {"price_spike": {"treshold": 5}}}}}}, {},
     r"quality\.price_spike\.treshold: price_spike has no parameter 'treshold' \(it takes: severity, .*threshold\)"),
    ({"pipelines": {"daily_bars": {"options": {"quality": {"stale_close": {"run": 2.5}}}}}}, {},
     r"quality\.stale_close\.run: 2\.5 is not a whole number \(default 5\)"),
    ({"pipelines": {"company_news": {"options": {"quality": {"published_in_future": {"future_s": "soon"}}}}}}, {},
     r"quality\.published_in_future\.future_s: 'soon' is not a number \(default 300\.0\)"),
])
def test_invalid_configuration_names_key_and_source(tmp_path: Path, config: dict, env: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(env_with(tmp_path, config, **env), root=ROOT)


def test_two_providers_serving_the_same_bars_are_refused_unless_one_is_a_reference(tmp_path: Path) -> None:
    second = {"polygon_daily_bars": {"enabled": True, "options": {"reference": False}}}
    with pytest.raises(ConfigError, match=r"pipelines\.polygon_daily_bars: serves 1d bars of symbols AAPL, AMZN, "
                                          r"GOOGL, MSFT, NVDA from 'polygon', as pipeline 'daily_bars' does "
                                          r"from 'alpaca': each would overwrite the other's bars\..*reference: true"
                                          r".*\(enabled in .*override\.yaml\)"):
        load_settings(env_with(tmp_path, {"pipelines": second}), root=ROOT)
    # A second opinion, another interval, other symbols, or the same provider twice: accepted.
    for change in ({"options": {"reference": True}}, {"interval": "1h"}, {"symbols": ["ASML"]},
                   {"provider": "alpaca"}):
        load_settings(env_with(tmp_path, {"pipelines": {"polygon_daily_bars": {**second["polygon_daily_bars"],
                                                                              **change}}}), root=ROOT)
    # Symbols kept in one file: the same source, refused without reading it.
    listed = tmp_path / "universe.txt"
    listed.write_text("IBM\n")
    config = {"symbols": {"from_file": {"file": str(listed)}},
              "pipelines": {"daily_bars": {"symbols": "from_file"},
                            "polygon_daily_bars": {**second["polygon_daily_bars"], "symbols": "from_file"}}}
    with pytest.raises(ConfigError, match=r"serves 1d bars of the symbols of file .*universe\.txt from 'polygon'"):
        load_settings(env_with(tmp_path, config), root=ROOT)


def test_quality_options_are_read_as_their_types_and_a_bare_off_turns_a_check_off(tmp_path: Path) -> None:
    from stockpulse.datatypes import get_data_type
    from stockpulse.quality import configured

    path = tmp_path / "override.yaml"
    # As an operator writes it: YAML reads a bare `off` as false.
    path.write_text("pipelines:\n  daily_bars:\n    options:\n      quality:\n"
                    "        stale_close: {severity: off}\n        price_spike: {severity: error, threshold: 8}\n")
    environ = env_with(tmp_path, STOCKPULSE_CONFIG=str(path))
    pipe = load_settings(environ, root=ROOT).pipelines["daily_bars"]
    checks = {check.name: (severity, params) for check, severity, params in
              configured(get_data_type("bars").quality_checks, pipe)}
    assert "stale_close" not in checks
    assert checks["price_spike"] == ("error", {"threshold": 8.0, "min_history": 20, "history": 60})
    assert isinstance(checks["price_spike"][1]["threshold"], float)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPULSE_")}
    clean.update(env)
    return subprocess.run([sys.executable, "-m", "stockpulse.cli", *args], env=clean, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_missing_key_for_an_enabled_pipeline(tmp_path: Path) -> None:
    environ = env_with(tmp_path, STOCKPULSE_PROVIDERS__ALPACA__API_KEY="")
    load_settings(environ, root=ROOT)  # readers and enqueuers need no keys
    with pytest.raises(ConfigError, match=r"providers\.alpaca\.api_key: missing, and enabled pipeline 'daily_bars'"):
        load_settings(environ, root=ROOT, check_secrets=True)
    result = run_cli("config", "check", env=environ)
    assert result.returncode == 2 and "providers.alpaca.api_key: missing" in result.stderr


def test_config_check_exits_2_with_the_message(tmp_path: Path) -> None:
    result = run_cli("config", "check", env=env_with(tmp_path, {"pipelines": {"daily_bars": {"symbols": ["aapl"]}}}))
    assert result.returncode == 2, result.stderr
    assert "pipelines.daily_bars.symbols: invalid symbol 'aapl'" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_and_show_succeed_and_hide_secrets(tmp_path: Path) -> None:
    # The default configuration's enabled pipelines need Alpaca (bars) and Finnhub (news, fundamentals) keys.
    env = env_with(tmp_path, STOCKPULSE_PROVIDERS__ALPACA__API_KEY="SUPERSECRET1",
                   STOCKPULSE_PROVIDERS__FINNHUB__API_KEY="SUPERSECRET2")
    checked = run_cli("config", "check", env=env)
    assert checked.returncode == 0, checked.stderr
    shown = run_cli("config", "show", env=env)
    assert shown.returncode == 0 and "api_key: '***'" in shown.stdout
    assert "SUPERSECRET1" not in shown.stdout and "SUPERSECRET2" not in shown.stdout


def test_worker_refuses_to_start_without_provider_keys(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPULSE_")}
    clean["STOCKPULSE_REDIS_URL"] = os.environ["STOCKPULSE_REDIS_URL"]
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "stockpulse", "worker", "-Q", "maintenance"],
                            env=clean, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "providers.alpaca.api_key: missing" in result.stderr


def test_a_broken_config_stops_every_celery_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPULSE_")}
    env.update(env_with(tmp_path, {"pipelines": {"daily_bars": {"queue": "nowhere"}}}))
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "stockpulse", "inspect", "registered"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pipelines.daily_bars.queue: Must be one of" in result.stderr


def test_an_enabled_sec_pipeline_needs_a_descriptive_user_agent(tmp_path: Path) -> None:
    config = {"pipelines": {"sec_company_facts": {"enabled": True}}}
    env = env_with(tmp_path, config, STOCKPULSE_PROVIDERS__FINNHUB__API_KEY="k")
    refused = run_cli("config", "check", env=env)
    assert refused.returncode == 2
    assert "providers.sec.user_agent: SEC requires a User-Agent naming your company and a contact e-mail" in refused.stderr
    env["STOCKPULSE_PROVIDERS__SEC__USER_AGENT"] = "Example Corp data@example.com"
    accepted = run_cli("config", "check", env=env)
    assert accepted.returncode == 0, accepted.stderr
