"""Worker groups from ``workers/workers.yaml``: the one definition compose and standalone share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from stockpulse.config import QUEUES, project_root
from stockpulse.errors import ConfigError


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int

    def command(self) -> list[str]:
        return ["celery", "-A", "stockpulse", "worker", "-Q", ",".join(self.queues), "-P", self.pool,
                "-c", str(self.concurrency), "-n", f"{self.name}@%h", "-E"]


def load_worker_groups(path: Path | None = None) -> dict[str, WorkerGroup]:
    path = path or project_root() / "workers" / "workers.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    groups = {}
    for name, raw in (data.get("groups") or {}).items():
        queues = tuple(raw.get("queues") or ())
        unknown = [q for q in queues if q not in QUEUES]
        if unknown:
            raise ConfigError(f"{path}: groups.{name}.queues: unknown queue {unknown[0]!r} (known: {', '.join(QUEUES)})")
        if raw.get("pool", "prefork") not in ("prefork", "threads", "solo"):
            raise ConfigError(f"{path}: groups.{name}.pool: must be prefork, threads or solo")
        groups[name] = WorkerGroup(name, queues, raw.get("pool", "prefork"), int(raw.get("concurrency", 1)))
    return groups
