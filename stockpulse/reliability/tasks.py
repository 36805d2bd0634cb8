"""Operator actions as Celery tasks (maintenance queue), so ``celery -A stockpulse call`` can drive them:

    celery -A stockpulse call stockpulse.maintenance.dlq_replay --kwargs '{"entry_id": "<id>"}'
    celery -A stockpulse call stockpulse.maintenance.dlq_replay --kwargs '{"all": true, "pipeline": "daily_bars"}'
    celery -A stockpulse call stockpulse.maintenance.dlq_purge --kwargs '{"older_than": "7d"}'
"""

from __future__ import annotations

from typing import Any

from stockpulse.celery_app import app
from stockpulse.reliability import dlq


@app.task(name="stockpulse.maintenance.dlq_list")
def dlq_list(pipeline: str | None = None) -> list[dict[str, Any]]:
    return [e.summary() for e in dlq.entries(pipeline=pipeline)]


@app.task(name="stockpulse.maintenance.dlq_replay")
def dlq_replay(entry_id: str | None = None, all: bool = False, pipeline: str | None = None,
               dry_run: bool = False) -> list[dict[str, Any]]:
    if entry_id is None and not all:
        raise ValueError("give entry_id, or all=true")
    ids = [entry_id] if entry_id else [e.id for e in dlq.entries(pipeline=pipeline)]
    return [dlq.replay(i, dry_run=dry_run) for i in ids]


@app.task(name="stockpulse.maintenance.dlq_purge")
def dlq_purge(entry_id: str | None = None, older_than: str | None = None) -> int:
    from stockpulse.schedule import parse_duration

    if entry_id is None and older_than is None:
        raise ValueError("give entry_id or older_than")
    return dlq.purge(entry_id, older_than_s=parse_duration(older_than).total_seconds() if older_than else None)


@app.task(name="stockpulse.maintenance.dlq_show")
def dlq_show(entry_id: str) -> dict[str, Any]:
    entry = dlq.get(entry_id)
    return {**entry.summary(), "traceback": entry.traceback}


@app.task(name="stockpulse.maintenance.sweep_stale_runs")
def sweep_stale_runs(older_than_s: float | None = None) -> list[list[Any]]:
    """Fail and dead-letter batches that stopped making progress (lost messages)."""
    from stockpulse.config import get_settings
    from stockpulse.pipeline.runs import sweep_stale

    threshold = older_than_s if older_than_s is not None else float(get_settings().runs.get("stale_after_s", 21600))
    return [list(item) for item in sweep_stale(threshold)]


@app.task(name="stockpulse.maintenance.detect_gaps")
def detect_gaps() -> dict[str, int]:
    """Count the sessions each enabled daily-bars pipeline is missing (``stockpulse gaps`` lists them)."""
    import logging

    from stockpulse.pipeline.gaps import detect_all

    counts = detect_all()
    logging.getLogger("stockpulse.pipeline").info(
        "gap detection: %d missing sessions over %d pipelines", sum(counts.values()), len(counts),
        extra={"missing_sessions": counts})
    return counts


@app.task(name="stockpulse.maintenance.notify")
def notify() -> list[dict[str, Any]]:
    """The built-in notifier's evaluation (``notifier.enabled``): alerts from the database and Redis."""
    from dataclasses import asdict

    from stockpulse.config import get_settings
    from stockpulse.observability.notifier import notify as evaluate_and_send

    if not get_settings().notifier.get("enabled"):
        return []
    return [{"status": n.status, "repeat": n.repeat, **asdict(n.alert)} for n in evaluate_and_send()]


@app.task(name="stockpulse.maintenance.reconcile_bars")
def reconcile_bars(pipeline: str | None = None, days: int | None = None) -> list[dict[str, Any]]:
    """Compare reference pipelines' bars with the served bars; disagreements become quality findings."""
    from stockpulse.pipeline.reconcile import as_dicts, reconcile

    return as_dicts(reconcile(pipeline, days=days))
