"""What both benchmarks do before measuring: a config file, an empty migrated database, an empty Redis
database, and a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def prepare(config: dict[str, Any], database_url: str, redis_url: str) -> tuple[Any, Path]:
    """Write ``config`` and point this process at it; drop and re-migrate the database; flush Redis.
    Every pipeline of settings/default.yaml that ``config`` does not declare is disabled, so the worker
    needs no provider key the benchmark does not use. Returns the engine and the working folder."""
    defaults = yaml.safe_load((ROOT / "settings" / "default.yaml").read_text()).get("pipelines") or {}
    pipelines = config.setdefault("pipelines", {})
    for name in defaults:
        pipelines.setdefault(name, {"enabled": False})
    workdir = Path(tempfile.mkdtemp(prefix="stockpulse-bench-"))
    (workdir / "bench.yaml").write_text(yaml.safe_dump(config))
    os.environ.update({"STOCKPULSE_CONFIG": str(workdir / "bench.yaml"), "STOCKPULSE_DATABASE_URL": database_url,
                       "STOCKPULSE_REDIS_URL": redis_url, "STOCKPULSE_HOME": str(ROOT)})
    import redis

    from stockpulse.db.engine import get_engine
    from stockpulse.db.migrate import upgrade

    engine = get_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    upgrade(database_url)
    redis.Redis.from_url(redis_url).flushdb()
    return engine, workdir


def start_worker(workdir: Path, *worker_args: str, timeout: float = 60) -> subprocess.Popen:
    """``celery worker`` with ``worker_args`` (queues, pool, concurrency), answering pings before it returns."""
    log = open(workdir / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "stockpulse", "worker", *worker_args,
                               "-l", "WARNING", "--without-mingle", "--without-gossip"],
                              cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    from stockpulse import app

    deadline = time.monotonic() + timeout
    while not app.control.ping(timeout=0.5):
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise SystemExit(f"the worker did not start:\n{(workdir / 'worker.log').read_text()[-3000:]}")
        time.sleep(0.2)
    return worker
