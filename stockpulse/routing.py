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
            pipe = pipelines[pipeline]
            if name.startswith("stockpulse.pipeline.") and is_stream(pipe):
                # A stream pipeline's REST runs (gap fills, backfills) must not wait behind, or take the
                # threads of, the long-lived consumers on its own queue.
                return {"queue": str(pipe.options.get("backfill_queue", "historical"))}
            return {"queue": pipe.queue}
    return None


def is_stream(pipe: Any) -> bool:
    from stockpulse.providers import PROVIDERS

    spec = PROVIDERS.get(pipe.provider)
    return spec is not None and pipe.data_type in spec.streams
