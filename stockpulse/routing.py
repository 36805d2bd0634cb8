"""Queues and task routing, declared once.

Each data type has its own queue so a slow news source never starves real-time data. Pipeline tasks carry
the pipeline name in their kwargs; the router sends them to that pipeline's queue.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from stockpulse.config import QUEUES

TASK_QUEUES = tuple(Queue(name, routing_key=name) for name in QUEUES)
MAINTENANCE_TASK_PREFIX = "stockpulse.maintenance."


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> dict | None:
    if name.startswith(MAINTENANCE_TASK_PREFIX):
        return {"queue": "maintenance"}
    pipeline = (kwargs or {}).get("pipeline")
    if pipeline and name.startswith(("stockpulse.pipeline.", "stockpulse.realtime.")):
        from stockpulse.config import get_settings

        pipelines = get_settings().pipelines
        if pipeline in pipelines:
            return {"queue": pipelines[pipeline].queue}
    return None
