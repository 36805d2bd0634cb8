"""Test harness: a real Redis, real databases, a real Celery worker process, and the provider simulator.

Configuration reaches the code under test the way it reaches production: a YAML file named by
STOCKPULSE_CONFIG plus STOCKPULSE_* variables, set here before anything imports the Celery app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_REDIS_URL = os.environ.get("STOCKPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
TEST_PG_URL = os.environ.get("STOCKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
QUEUES = "realtime,historical,fundamentals,news,maintenance"
CANARY_KEY = "CANARY-KEY-7f3a9c"

_tmp = Path(tempfile.mkdtemp(prefix="stockpulse-tests-"))
_private_redis: Any = None
_sim_server: Any = None
SIM_URL = ""


def _start_redis() -> str:
    """The test Redis: the one at TEST_REDIS_URL, else a private redis-server (never a skip)."""
    global _private_redis
    from stockpulse.standalone import PrivateRedis, redis_answers

    if redis_answers(TEST_REDIS_URL):
        return TEST_REDIS_URL
    _private_redis = PrivateRedis(_tmp / "redis").start(persist=False)
    return _private_redis.url.replace("/0", "/9")


STREAM_TIMINGS = {"flush_ms": 50, "silence_s": 3, "lease_ttl_s": 4, "backoff_base_s": 0.2, "backoff_cap_s": 1,
                  "max_session_s": 600, "config_check_s": 0.5, "ping_s": 1}


def test_config(sim_url: str, ws_url: str = "") -> dict[str, Any]:
    # Quotas and breakers have their own tests; elsewhere they must not get in the way.
    # Stage-level retries are what most tests exercise, so requests are not retried in place here.
    unlimited = {"rate_limit": "10000/second", "breaker": {"fail_max": 50, "reset_timeout_s": 1},
                 "request_retries": 0}
    fast = {"max_retries": 3, "backoff_base_s": 0.2, "backoff_cap_s": 1.5, "soft_time_limit_s": 60,
            "time_limit_s": 90}
    return {
        "environment": "test",
        "logging": {"format": "json"},
        "metrics": {"port": 0},  # a test that scrapes a worker gives it a port of its own
        # Small, so a message held by a SIGKILLed worker comes back quickly; above every retry countdown.
        "celery": {"visibility_timeout_s": 8, "unacked_restore_interval_s": 2},
        "stages": {"fetch": fast, "transform": fast, "load": fast},
        "payloads": {"inline_max_bytes": 4096, "ttl_s": 3600},
        "providers": {
            "alpaca": {"base_url": sim_url, "api_key": "test-key", "api_secret": "test-secret", "timeout_s": 5,
                       "options": {"page_limit": 700, "ws_url": ws_url}, **unlimited},
            "polygon": {"base_url": sim_url, "api_key": "test-key", "timeout_s": 5, **unlimited},
            "alphavantage": {"base_url": sim_url, "api_key": "test-key", "timeout_s": 5, **unlimited},
            "coinbase": {"base_url": sim_url, "timeout_s": 5, "options": {"ws_url": f"{ws_url}/coinbase"},
                         **unlimited},
            "finnhub": {"base_url": sim_url, "api_key": "test-key", "timeout_s": 5, **unlimited,
                        "options": {"ws_url": ws_url}},
            "sec": {"base_url": sim_url, "timeout_s": 5, "user_agent": "StockPulse tests tests@example.com",
                    **unlimited},
            "rss": {"base_url": sim_url, "timeout_s": 5, **unlimited,
                    "options": {"feeds": ["/rss/2.0/headline?s={symbol}&region=US&lang=en-US"]}},
        },
        "symbols": {"test_equities": ["AAPL", "MSFT", "IBM"], "test_crypto": ["BTC-USD", "ETH-USD"],
                    "bulk": ["AAPL", "MSFT", "IBM", "AMZN", "NVDA", "GOOGL", "META", "TSLA"]},
        "pipelines": {
            "daily_bars": {"data_type": "bars", "provider": "alpaca", "symbols": "test_equities",
                           "batch_size": 2},
            "crypto_daily_bars": {"data_type": "bars", "provider": "coinbase", "symbols": "test_crypto"},
            # Served bars here (the shipped config makes them reference pipelines), so tests read them in bars;
            # disabled (run by hand only): enabled, they would serve daily_bars' symbols too, which config refuses.
            "polygon_daily_bars": {"data_type": "bars", "provider": "polygon", "symbols": "test_equities",
                                   "enabled": False, "options": {"reference": False}},
            "alphavantage_daily_bars": {"data_type": "bars", "provider": "alphavantage", "enabled": False,
                                        "symbols": "test_equities", "options": {"reference": False}},
            "polygon_reference_bars": {"data_type": "bars", "provider": "polygon", "symbols": "test_equities",
                                       "enabled": False, "options": {"reference": True}},
            "bulk_bars": {"data_type": "bars", "provider": "alpaca", "symbols": "bulk", "batch_size": 4},
            "finnhub_news": {"data_type": "news", "provider": "finnhub", "symbols": "test_equities",
                             "batch_size": 2, "options": {"overlap_days": 1}},
            "polygon_news": {"data_type": "news", "provider": "polygon", "symbols": "test_equities"},
            "alphavantage_news": {"data_type": "news", "provider": "alphavantage", "symbols": "test_equities"},
            "sec_facts": {"data_type": "fundamentals", "provider": "sec", "symbols": "test_equities",
                          "options": {"lookback_days": 36500, "overlap_days": 7}},
            "finnhub_fundamentals": {"data_type": "fundamentals", "provider": "finnhub", "symbols": "test_equities"},
            "alphavantage_overview": {"data_type": "fundamentals", "provider": "alphavantage",
                                      "symbols": "test_equities"},
            # Short timings so reconnects, silences and takeovers happen within a test.
            "finnhub_trades": {"data_type": "trades", "provider": "finnhub", "symbols": "test_equities",
                               "options": STREAM_TIMINGS},
            # Off unless a test turns them on (the supervisor starts every enabled stream).
            "crypto_trades": {"enabled": False},  # the default config's keyless stream
            "alpaca_trades": {"data_type": "trades", "provider": "alpaca", "symbols": "test_equities",
                              "enabled": False,
                              # The simulator trades around the clock; tests must not depend on the hour.
                              "options": {**STREAM_TIMINGS, "gap_margin_s": 0.5, "calendar": "none"}},
            "coinbase_trades": {"data_type": "trades", "provider": "coinbase", "symbols": "test_crypto",
                                "enabled": False, "options": STREAM_TIMINGS},
            "rss_news": {"data_type": "news", "provider": "rss", "symbols": "test_equities",
                         "options": {"lookback_days": 7, "overlap_days": 1}},
        },
    }


def pytest_configure(config: pytest.Config) -> None:
    global _sim_server, SIM_URL
    from stockpulse.sim.server import SimState, serve_in_thread

    _sim_server, SIM_URL = serve_in_thread(state=SimState(seed=7, slow_s=1.0))
    config_path = _tmp / "stockpulse-test.yaml"
    config_path.write_text(yaml.safe_dump(test_config(SIM_URL, _sim_server.ws_url)))
    os.environ["STOCKPULSE_CONFIG"] = str(config_path)
    os.environ["STOCKPULSE_REDIS_URL"] = _start_redis()
    os.environ["STOCKPULSE_DATABASE_URL"] = f"sqlite:///{_tmp / 'default.db'}"
    os.environ["STOCKPULSE_HOME"] = str(ROOT)
    for name in list(os.environ):
        if name.startswith("STOCKPULSE_PROVIDERS__"):
            del os.environ[name]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _sim_server is not None:
        _sim_server.shutdown()
    if _private_redis is not None:
        _private_redis.stop()


# ------------------------------------------------------------------------------------------------ basics


@pytest.fixture(scope="session")
def sim_url() -> str:
    return SIM_URL


@pytest.fixture()
def sim(sim_url: str) -> Iterator[Any]:
    """The simulator, with faults and corruptions cleared before and after the test."""
    requests.delete(f"{sim_url}/_sim/faults", timeout=5)
    yield SimControl(sim_url)
    requests.delete(f"{sim_url}/_sim/faults", timeout=5)


@dataclass
class SimControl:
    url: str

    def fault(self, provider: str, kind: str, times: int = 1) -> None:
        requests.post(f"{self.url}/_sim/faults", json={"provider": provider, "kind": kind, "times": times},
                      timeout=5).raise_for_status()

    def clear(self) -> None:
        requests.delete(f"{self.url}/_sim/faults", timeout=5).raise_for_status()

    def fault_rate(self, provider: str, rate: float, kinds: list[str]) -> None:
        requests.post(f"{self.url}/_sim/fault-rate", json={"provider": provider, "rate": rate, "kinds": kinds},
                      timeout=5).raise_for_status()

    def corrupt(self, symbol: str, day: str, kind: str, provider: str = "*") -> None:
        requests.post(f"{self.url}/_sim/corrupt", json={"provider": provider, "symbol": symbol, "date": day,
                                                         "kind": kind}, timeout=5).raise_for_status()

    def stream(self, action: str, **extra: Any) -> dict[str, Any]:
        reply = requests.post(f"{self.url}/_sim/stream", json={"action": action, **extra}, timeout=5)
        reply.raise_for_status()
        return reply.json()

    def streamed(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_sim/stream", timeout=5).json()

    def requests_made(self, provider: str) -> int:
        return requests.get(f"{self.url}/_sim/stats", timeout=5).json()["requests"].get(provider, 0)


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(os.environ["STOCKPULSE_REDIS_URL"])
    client.ping()
    return client


def postgres_url_or_fail() -> str:
    import sqlalchemy

    from stockpulse.db.engine import normalise_url

    try:
        engine = sqlalchemy.create_engine(normalise_url(TEST_PG_URL))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        message = f"PostgreSQL at {TEST_PG_URL} does not answer: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    return TEST_PG_URL


def reset_database(url: str) -> None:
    """Drop everything and migrate from scratch."""
    import sqlalchemy

    from stockpulse.db.engine import dispose_all, normalise_url
    from stockpulse.db.migrate import upgrade

    dispose_all()
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    else:
        engine = sqlalchemy.create_engine(normalise_url(url))
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()
    upgrade(url)


def use_database(url: str) -> None:
    from stockpulse.config import reset_settings
    from stockpulse.db.engine import dispose_all

    os.environ["STOCKPULSE_DATABASE_URL"] = url
    reset_settings()
    dispose_all()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database of each kind, made current for the code under test."""
    url = f"sqlite:///{tmp_path / 'test.db'}" if request.param == "sqlite" else postgres_url_or_fail()
    reset_database(url)
    use_database(url)
    yield url
    use_database(f"sqlite:///{_tmp / 'default.db'}")


# ------------------------------------------------------------------------------------------------ worker


@dataclass
class Worker:
    process: subprocess.Popen
    log_path: Path
    extra_env: dict[str, str] | None = None
    custom: bool = False  # started by restart_worker: replaced by a standard one before the next test

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)


def start_worker(name: str, *, concurrency: int = 2, extra_env: dict[str, str] | None = None,
                 timeout: float = 60, queues: str = QUEUES, pool: str = "prefork") -> Worker:
    log_path = _tmp / f"worker-{name}-{time.time_ns()}.log"
    env = dict(os.environ, **(extra_env or {}))
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "stockpulse", "worker", "-Q", queues, "-P", pool, "-c", str(concurrency),
             "-n", f"{name}@%h", "-l", "INFO", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(process, log_path, extra_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}:\n{worker.log()[-4000:]}")
        if " ready." in worker.log():
            return worker
        time.sleep(0.1)
    worker.stop()
    raise RuntimeError(f"worker not ready in {timeout}s:\n{worker.log()[-4000:]}")


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, redis_client: redis.Redis) -> Iterator[Stack]:
    """A migrated database of each kind and a real worker process using it (one kind at a time)."""
    url = f"sqlite:///{_tmp / 'stack.db'}" if request.param == "sqlite" else postgres_url_or_fail()
    reset_database(url)
    use_database(url)
    redis_client.flushdb()
    worker = start_worker(f"test-{request.param}")
    stack = Stack(request.param, url, worker)
    yield stack
    stack.worker.stop()
    use_database(f"sqlite:///{_tmp / 'default.db'}")


@dataclass
class Stack:
    backend: str
    url: str
    worker: Worker

    def ensure_worker(self) -> None:
        if self.worker.process.poll() is not None or self.worker.custom:
            self.worker.stop()
            self.worker = start_worker(f"test-{self.backend}")

    def restart_worker(self, queues: str = QUEUES, **extra_env: str) -> Worker:
        """Replace the worker with one whose environment adds ``extra_env`` (until the next test)."""
        self.worker.stop()
        self.worker = start_worker(f"test-{self.backend}-custom", extra_env=extra_env, queues=queues)
        self.worker.custom = True
        return self.worker

    def run(self, pipeline: str, *, timeout: float = 60, **kwargs: Any) -> Any:
        from stockpulse.pipeline.runs import start_run

        return self.wait(start_run(pipeline, **kwargs), timeout=timeout)

    def wait(self, run_id: str, timeout: float = 60) -> Any:
        from stockpulse.pipeline.runs import FINAL, get_run

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = get_run(run_id)
            if run is not None and run.status in FINAL:
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} not finished in {timeout}s: {get_run(run_id)}\n"
                             f"{self.worker.log()[-3000:]}")


@pytest.fixture()
def clean_stack(stack: Stack, sim: SimControl, redis_client: redis.Redis) -> Iterator[Stack]:
    """The stack with empty tables and no stored payloads."""
    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import metadata

    use_database(stack.url)
    stack.ensure_worker()
    with get_engine().begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    for pattern in ("stockpulse:payload:*", "stockpulse:dlq:*", "stockpulse:breaker:*", "stockpulse:quota*",
                    "stockpulse:failures:*", "stockpulse:fetch-checkpoint:*"):
        for key in redis_client.scan_iter(pattern):
            redis_client.delete(key)
    yield stack


def table_rows(table_name: str) -> list[Any]:
    from sqlalchemy import select

    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import metadata

    table = metadata.tables[table_name]
    with get_engine().connect() as conn:
        return conn.execute(select(table)).all()


def weekdays(start: date, end: date) -> list[date]:
    from stockpulse.sim.data import trading_days

    return trading_days(start, end)


def bar_count(**where: str) -> int:
    """Rows in ``bars``, optionally where column == value."""
    from sqlalchemy import func, select

    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import bars

    query = select(func.count()).select_from(bars)
    for column, value in where.items():
        query = query.where(bars.c[column] == value)
    with get_engine().connect() as conn:
        return conn.execute(query).scalar()
