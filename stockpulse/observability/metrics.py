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
        latency=Histogram("stockpulse_ingestion_latency_seconds",
                          "Provider event time of the newest record of a batch -> its load committed "
                          "(scheduled and manual runs; backfills and replays load old data on purpose)",
                          PIPELINE_LABELS, buckets=LATENCY_BUCKETS),
        provider_requests=Counter("stockpulse_provider_requests_total",
                                  "HTTP requests to providers by status code (error: no response at all)",
                                  ["provider", "status"]),
        provider_seconds=Histogram("stockpulse_provider_request_duration_seconds",
                                   "Provider HTTP request duration, body included", ["provider"],
                                   buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)),
        db_in_use=Gauge("stockpulse_db_pool_connections_in_use",
                        "Database connections checked out of the pools of this worker's processes",
                        multiprocess_mode="livesum"),
        db_checkouts=Counter("stockpulse_db_pool_checkouts_total", "Database connections checked out of a pool"),
        stream_consumers=Gauge("stockpulse_stream_consumers", "Stream consumers by connection state "
                               "(connecting, connected, reconnecting)", [*PIPELINE_LABELS, "state"],
                               multiprocess_mode="livesum"),
        stream_reconnects=Counter("stockpulse_stream_reconnects_total", "Stream reconnections, by what ended the "
                                  "previous connection", [*PIPELINE_LABELS, "reason"]),
        stream_gaps=Counter("stockpulse_stream_gaps_total", "Windows a stream received nothing (recorded in "
                            "stream_gaps)", PIPELINE_LABELS),
        stream_gap_seconds=Counter("stockpulse_stream_gap_seconds_total", "Seconds without data across gaps",
                                   PIPELINE_LABELS),
        stream_backlog=Gauge("stockpulse_stream_backlog_ticks", "Ticks received and waiting in memory for their "
                             "commit", [*PIPELINE_LABELS, "shard"], multiprocess_mode="livesum"),
        stream_lag=Gauge("stockpulse_stream_load_lag_seconds", "Age of the oldest received tick not yet committed "
                         "(0 when the backlog is empty)", [*PIPELINE_LABELS, "shard"], multiprocess_mode="livemax"),
        quality_findings=Counter("stockpulse_quality_findings_total",
                                 "Data-quality findings of the transform stage (error: the record was quarantined)",
                                 [*PIPELINE_LABELS, "check", "severity"]),
        stream_spilled=Counter("stockpulse_stream_spilled_ticks_total", "Ticks spilled to Redis because the "
                               "in-memory backlog was full, the lease was lost or the consumer stopped",
                               PIPELINE_LABELS),
    )


# Realtime ticks land in well under a second; a daily bar is first seen a day after its session opened.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 2 * 86400, 4 * 86400,
                   7 * 86400)


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
def initialise() -> None:
    """Create the series of every configured pipeline and provider at zero, so rate() and increase() work
    from the first event and dashboards show 0 rather than "no data"."""
    from stockpulse.config import get_settings

    settings, m = get_settings(), metrics()
    for name, pipe in settings.pipelines.items():
        if not pipe.enabled:
            continue
        labels = labels_for(name)
        for stage, outcome in (("transform", "fetched"), ("transform", "valid"), ("transform", "rejected"),
                               ("load", "loaded")):
            m.records.labels(**labels, stage=stage, outcome=outcome).inc(0)
        for kind in ("quota", "breaker"):
            m.waits.labels(provider=pipe.provider, kind=kind).inc(0)
        from stockpulse.datatypes import get_data_type

        for check in get_data_type(pipe.data_type).quality_checks:
            for severity in ("error", "warn"):
                m.quality_findings.labels(**labels, check=check.name, severity=severity).inc(0)
        # A failed-runs alert is increase() > 0: the series must exist at 0 before the first failure.
        for trigger in ("schedule", "manual", "backfill", "replay", "gap_fill"):
            for status in ("succeeded", "partial", "failed"):
                m.runs.labels(**labels, trigger=trigger, status=status).inc(0)
        if pipe.queue == "realtime":  # a stream pipeline: its connection states and gap counters start at 0
            for state in ("connecting", "connected", "reconnecting"):
                m.stream_consumers.labels(**labels, state=state).inc(0)
            m.stream_gaps.labels(**labels).inc(0)
            m.stream_gap_seconds.labels(**labels).inc(0)
            m.stream_spilled.labels(**labels).inc(0)


@safely
def stage_done(pipeline: str, stage: str, outcome: str, seconds: float) -> None:
    metrics().stage_seconds.labels(**labels_for(pipeline), stage=stage, outcome=outcome).observe(seconds)


@safely
def quality_findings(pipeline: str, found: list[tuple[str, str]]) -> None:
    labels = labels_for(pipeline)
    for check, severity in found:
        metrics().quality_findings.labels(**labels, check=check, severity=severity).inc()


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


@safely
def ingestion_latency(pipeline: str, seconds: float) -> None:
    metrics().latency.labels(**labels_for(pipeline)).observe(max(seconds, 0.0))


@safely
def ingestion_latencies(pipeline: str, seconds: list[float]) -> None:
    child = metrics().latency.labels(**labels_for(pipeline))
    for value in seconds:
        child.observe(max(value, 0.0))


@safely
def stream_state(pipeline: str, old: str | None, new: str | None) -> None:
    """A consumer moved from ``old`` to ``new`` (None: not counted)."""
    gauge, labels = metrics().stream_consumers, labels_for(pipeline)
    if old:
        gauge.labels(**labels, state=old).dec()
    if new:
        gauge.labels(**labels, state=new).inc()


@safely
def stream_reconnect(pipeline: str, reason: str) -> None:
    metrics().stream_reconnects.labels(**labels_for(pipeline), reason=reason[:64]).inc()


@safely
def stream_gap(pipeline: str, seconds: float) -> None:
    m, labels = metrics(), labels_for(pipeline)
    m.stream_gaps.labels(**labels).inc()
    m.stream_gap_seconds.labels(**labels).inc(max(seconds, 0.0))


@safely
def stream_backlog(pipeline: str, shard: str, ticks: int, lag_s: float) -> None:
    m, labels = metrics(), labels_for(pipeline)
    m.stream_backlog.labels(**labels, shard=shard).set(ticks)
    m.stream_lag.labels(**labels, shard=shard).set(lag_s)


@safely
def stream_spilled(pipeline: str, ticks: int) -> None:
    metrics().stream_spilled.labels(**labels_for(pipeline)).inc(ticks)


@safely
def provider_request(provider: str, status: int | str, seconds: float) -> None:
    m = metrics()
    m.provider_requests.labels(provider=provider, status=str(status)).inc()
    m.provider_seconds.labels(provider=provider).observe(seconds)


def instrument_pool(engine: Any) -> None:
    """Count this process's checked-out connections (summed over a worker's processes on its endpoint)."""
    from sqlalchemy import event

    @event.listens_for(engine, "checkout")
    @safely
    def _checkout(*_: Any) -> None:
        m = metrics()
        m.db_in_use.inc()
        m.db_checkouts.inc()

    @event.listens_for(engine, "checkin")
    @safely
    def _checkin(*_: Any) -> None:
        metrics().db_in_use.dec()


class WorkerProcessCollector:
    """CPU seconds, RSS and open file descriptors of the worker's main process and each pool process: the
    client's own process collector, run for every pid and told apart by a ``process`` label (main, pool)."""

    def __init__(self, main_pid: int):
        self.main_pid = main_pid

    def collect(self) -> Any:
        from prometheus_client import ProcessCollector
        from prometheus_client.core import Metric

        families: dict[str, Metric] = {}
        for role, pid in self._processes():
            collector = ProcessCollector(namespace="stockpulse_worker", pid=lambda pid=pid: pid, registry=None)
            for family in collector.collect():
                target = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, "process": role, "pid": str(pid)},
                                      sample.value)
        return list(families.values())

    def _processes(self) -> list[tuple[str, int]]:
        found = [("main", self.main_pid)]
        # Pool processes are the main process's children; a replacement may be forked by another of its
        # threads (billiard's supervisor), so every thread's children are read.
        children: set[int] = set()
        try:
            for tid in os.listdir(f"/proc/{self.main_pid}/task"):
                with open(f"/proc/{self.main_pid}/task/{tid}/children") as listing:
                    children.update(int(pid) for pid in listing.read().split())
        except OSError:  # not Linux, or the process is going away
            pass
        return found + [("pool", pid) for pid in sorted(children)]


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Expose the sum over every process of this worker (multiprocess collector), plus each process's
    resource use."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(WorkerProcessCollector(os.getpid()))
    start_http_server(port, addr=address, registry=registry)


def process_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
