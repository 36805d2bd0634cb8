"""Pipeline metrics (prometheus-client), correct across a prefork pool.

Workers run in prometheus-client's multiprocess mode: each pool process writes its samples to files in
``metrics.multiproc_dir``, and the worker's main process serves their sum on ``metrics.port``. Labels are
bounded sets only (pipeline, data type, provider, stage, outcome, status, error type), never a symbol or
a run id.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PIPELINE_LABELS = ("pipeline", "data_type", "provider")


def enable_multiprocess(directory: Path, *, fresh: bool) -> None:
    """Switch prometheus-client to multiprocess values (before any metric exists in this process)."""
    if fresh and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue()


@lru_cache(maxsize=1)
def metrics() -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        runs=Counter("stockpulse_runs_total", "Finished pipeline runs by final status",
                     [*PIPELINE_LABELS, "trigger", "status"]),
        records=Counter("stockpulse_records_total", "Records by stage and outcome (fetched, valid, rejected, loaded)",
                        [*PIPELINE_LABELS, "stage", "outcome"]),
        stage_seconds=Histogram("stockpulse_stage_duration_seconds", "Duration of one stage of one batch",
                                [*PIPELINE_LABELS, "stage", "outcome"],
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)),
        retries=Counter("stockpulse_retries_total", "Stage retries after a transient failure",
                        [*PIPELINE_LABELS, "stage", "error_type"]),
        waits=Counter("stockpulse_waits_total", "Re-queues waiting for a quota slot or an open breaker",
                      ["provider", "kind"]),
        dead_letters=Counter("stockpulse_dead_letters_total", "Batches that landed in the dead-letter queue",
                             [*PIPELINE_LABELS, "stage", "error_type"]),
        last_success=Gauge("stockpulse_last_success_timestamp_seconds", "When a run of the pipeline last succeeded",
                           ["pipeline"], multiprocess_mode="max"),
    )


def labels_for(pipeline: str | None) -> dict[str, str]:
    from stockpulse.config import get_settings

    pipe = get_settings().pipelines.get(pipeline or "")
    if pipe is None:
        return {"pipeline": pipeline or "unknown", "data_type": "unknown", "provider": "unknown"}
    return {"pipeline": pipe.name, "data_type": pipe.data_type, "provider": pipe.provider}


def safely(func: Any) -> Any:
    """Metrics must never break a stage."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except Exception:  # pragma: no cover - logged, never raised
            import logging

            logging.getLogger("stockpulse.metrics").exception("metrics update failed")

    return wrapper


@safely
def stage_done(pipeline: str, stage: str, outcome: str, seconds: float) -> None:
    metrics().stage_seconds.labels(**labels_for(pipeline), stage=stage, outcome=outcome).observe(seconds)


@safely
def records(pipeline: str, stage: str, **counts: int) -> None:
    labels = labels_for(pipeline)
    for outcome, count in counts.items():
        if count:
            metrics().records.labels(**labels, stage=stage, outcome=outcome).inc(count)


@safely
def retry(pipeline: str, stage: str, error_type: str) -> None:
    metrics().retries.labels(**labels_for(pipeline), stage=stage, error_type=error_type).inc()


@safely
def wait(provider: str | None, kind: str) -> None:
    metrics().waits.labels(provider=provider or "unknown", kind=kind).inc()


@safely
def dead_letter(pipeline: str, stage: str, error_type: str) -> None:
    metrics().dead_letters.labels(**labels_for(pipeline), stage=stage, error_type=error_type).inc()


@safely
def run_finished(pipeline: str, trigger: str, status: str, finished_at: float) -> None:
    metrics().runs.labels(**labels_for(pipeline), trigger=trigger, status=status).inc()
    if status in ("succeeded", "partial"):
        metrics().last_success.labels(pipeline=pipeline).set(finished_at)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Expose the sum over every process of this worker (multiprocess collector)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=address, registry=registry)


def process_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
