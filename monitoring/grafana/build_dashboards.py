"""Writes the provisioned Grafana dashboards (monitoring/grafana/dashboards/*.json) from one short
description each, so panels stay consistent. Edit here, then run:

    python monitoring/grafana/build_dashboards.py

tests/observability/test_dashboards.py fails when the JSON is out of date; test_prometheus.py checks every
query against a live Prometheus and the metrics the project really exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
PIPE = 'pipeline=~"$pipeline"'
RATE = "[$__rate_interval]"


def panel(title: str, targets: list[tuple[str, str]], *, kind: str = "timeseries", unit: str = "short",
          description: str = "", width: int = 12, height: int = 8, thresholds: list[tuple[float, str]] | None = None,
          mappings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in (thresholds or [])]
    return {
        "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                     "mappings": mappings or []}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}}
        if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
        "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
                    for i, (expr, legend) in enumerate(targets)],
    }


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
              variables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    x = y = row_height = 0
    for i, p in enumerate(panels, start=1):  # lay panels out left to right, wrapping at 24 columns
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        p["gridPos"].update(x=x, y=y)
        p["id"] = i
        x, row_height = x + w, max(row_height, h)
    return {
        "uid": uid, "title": title, "description": description, "tags": ["stockpulse"], "editable": True,
        "schemaVersion": 38, "version": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc", "panels": panels,
        "templating": {"list": variables or []},
        "links": [{"type": "dashboards", "tags": ["stockpulse"], "title": "StockPulse", "asDropdown": True}],
    }


PIPELINE_VARIABLE = {
    "name": "pipeline", "label": "pipeline", "type": "query", "datasource": DATASOURCE,
    "query": {"query": "label_values(stockpulse_pipeline_enabled, pipeline)", "refId": "pipeline"},
    "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
}

BREAKER_STATES = [{"type": "value", "options": {"0": {"text": "closed", "color": "green"},
                                                 "1": {"text": "half-open", "color": "yellow"},
                                                 "2": {"text": "open", "color": "red"}}}]
UP_DOWN = [{"type": "value", "options": {"0": {"text": "down", "color": "red"},
                                          "1": {"text": "up", "color": "green"}}}]
RUN_STATUS = [{"type": "value", "options": {"1": {"text": "latest"}}}]

PIPELINES = dashboard(
    "stockpulse-pipelines", "StockPulse pipelines",
    "Is every pipeline healthy, how much data moved, what failed and why, how fresh is each data type.",
    [
        panel("Newest run per pipeline", [(f'stockpulse_pipeline_last_run_status{{{PIPE}}} == 1',
                                           "{{pipeline}}: {{status}}")],
              kind="stat", width=24, height=4, mappings=RUN_STATUS,
              description="Status of each pipeline's newest run (exporter; from pipeline_runs)."),
        panel("Runs finished, by status", [(f"sum by (status) (increase(stockpulse_runs_total{{{PIPE}}}{RATE}))",
                                            "{{status}}")],
              description="Runs ending succeeded, partial (some records quarantined) or failed."),
        panel("Records loaded per second", [(f'sum by (pipeline) (rate(stockpulse_records_total{{stage="load", '
                                             f'outcome="loaded", {PIPE}}}{RATE}))', "{{pipeline}}")],
              unit="ops"),
        panel("Records quarantined per second", [(f'sum by (pipeline) (rate(stockpulse_records_total{{'
                                                  f'stage="transform", outcome="rejected", {PIPE}}}{RATE}))',
                                                  "{{pipeline}}")], unit="ops",
              description="Invalid records set aside with a reason: `stockpulse quarantine list`."),
        panel("Errors by type (retries and dead letters)", [
            (f"sum by (error_type) (increase(stockpulse_retries_total{{{PIPE}}}{RATE}))", "retry {{error_type}}"),
            (f"sum by (error_type) (increase(stockpulse_dead_letters_total{{{PIPE}}}{RATE}))",
             "dead letter {{error_type}}")],
              description="Transient errors retried, and batches that gave up into the DLQ."),
        panel("Stage duration p50 / p95", [
            (f"histogram_quantile(0.5, sum by (le, stage) (rate(stockpulse_stage_duration_seconds_bucket{{{PIPE}}}"
             f"{RATE})))", "p50 {{stage}}"),
            (f"histogram_quantile(0.95, sum by (le, stage) (rate(stockpulse_stage_duration_seconds_bucket{{{PIPE}}}"
             f"{RATE})))", "p95 {{stage}}")], unit="s"),
        panel("Ingestion latency p50 / p95", [
            (f"histogram_quantile(0.5, sum by (le, pipeline) (rate(stockpulse_ingestion_latency_seconds_bucket"
             f"{{{PIPE}}}{RATE})))", "p50 {{pipeline}}"),
            (f"histogram_quantile(0.95, sum by (le, pipeline) (rate(stockpulse_ingestion_latency_seconds_bucket"
             f"{{{PIPE}}}{RATE})))", "p95 {{pipeline}}")], unit="s",
              description="Provider event time of a batch's newest record to its commit (scheduled and manual "
                          "runs)."),
        panel("Data freshness per data type", [("stockpulse_data_freshness_seconds", "{{data_type}}")], unit="s",
              description="Age of the newest stored record of each data type."),
        panel("Since last successful run", [(f"time() - stockpulse_last_success_timestamp_seconds{{{PIPE}}}",
                                             "{{pipeline}}")], unit="s"),
        panel("Dead-letter queue depth", [("stockpulse_dlq_depth", "entries")], kind="stat", width=6,
              thresholds=[(1, "red")], description="`stockpulse dlq list` shows them; replay after fixing."),
        panel("Quarantined records", [(f"sum by (pipeline) (stockpulse_quarantine_records{{{PIPE}}})",
                                       "{{pipeline}}")], kind="stat", width=6, thresholds=[(1, "yellow")]),
        panel("Provider requests by HTTP status", [
            (f"sum by (provider, status) (rate(stockpulse_provider_requests_total{RATE}))",
             "{{provider}} {{status}}")], unit="reqps"),
        panel("Circuit breakers", [("stockpulse_circuit_breaker_state", "{{provider}}")], kind="stat",
              mappings=BREAKER_STATES, thresholds=[(1, "yellow"), (2, "red")]),
        panel("Quota and breaker waits", [(f"sum by (provider, kind) (increase(stockpulse_waits_total{RATE}))",
                                           "{{provider}} {{kind}}")]),
        panel("Provider quota remaining", [("stockpulse_provider_quota_remaining", "{{provider}}")]),
        panel("Stream consumers by state", [(f"sum by (pipeline, state) (stockpulse_stream_consumers{{{PIPE}}})",
                                             "{{pipeline}} {{state}}")],
              description="Real-time shards: connected should equal the number of shards; see docs/realtime.md."),
        panel("Stream gaps", [(f"sum by (pipeline) (increase(stockpulse_stream_gaps_total{{{PIPE}}}{RATE}))",
                               "gaps {{pipeline}}"),
                              (f"sum by (pipeline) (increase(stockpulse_stream_gap_seconds_total{{{PIPE}}}{RATE}))",
                               "seconds without data {{pipeline}}")],
              description="Disconnects and silences; each is a row in stream_gaps."),
    ],
    [PIPELINE_VARIABLE],
)

CELERY = dashboard(
    "stockpulse-celery", "StockPulse Celery",
    "Tasks by state, runtime, queue length and workers (celery-exporter metric names).",
    [
        panel("Workers up", [("celery_worker_up", "{{hostname}}")], kind="stat", width=24, height=4,
              mappings=UP_DOWN, description="Down: no event from the worker for exporter.worker_timeout_s."),
        panel("Tasks by state", [
            (f"sum(rate(celery_task_received_total{RATE}))", "received"),
            (f"sum(rate(celery_task_started_total{RATE}))", "started"),
            (f"sum(rate(celery_task_succeeded_total{RATE}))", "succeeded"),
            (f"sum(rate(celery_task_failed_total{RATE}))", "failed"),
            (f"sum(rate(celery_task_retried_total{RATE}))", "retried"),
            (f"sum(rate(celery_task_rejected_total{RATE}))", "rejected"),
            (f"sum(rate(celery_task_revoked_total{RATE}))", "revoked")], unit="ops"),
        panel("Failures by task and exception", [
            (f"sum by (name, exception) (increase(celery_task_failed_total{RATE}))", "{{name}} {{exception}}")]),
        panel("Task runtime p95", [(f"histogram_quantile(0.95, sum by (le, name) (rate(celery_task_runtime_bucket"
                                    f"{RATE})))", "{{name}}")], unit="s"),
        panel("Queue length (priority sub-queues included)", [("celery_queue_length", "{{queue_name}}")],
              description="A queue that keeps growing has too few workers, or none: check the workers panel."),
        panel("Live workers per queue", [("celery_active_worker_count", "{{queue_name}}")]),
        panel("Active tasks per worker", [("celery_worker_tasks_active", "{{hostname}}")]),
        panel("Tasks sent per queue", [(f"sum by (queue_name) (rate(celery_task_sent_total{RATE}))",
                                        "{{queue_name}}")], unit="ops"),
    ],
)

RESOURCES = dashboard(
    "stockpulse-resources", "StockPulse resources",
    "What the workers cost: CPU, memory and file descriptors per process; Redis; database pools.",
    [
        panel("Worker CPU per process", [(f"rate(stockpulse_worker_process_cpu_seconds_total{RATE})",
                                          "{{instance}} {{process}} {{pid}}")], unit="percentunit"),
        panel("Worker resident memory per process", [("stockpulse_worker_process_resident_memory_bytes",
                                                      "{{instance}} {{process}} {{pid}}")], unit="bytes"),
        panel("Worker open file descriptors", [("stockpulse_worker_process_open_fds",
                                                "{{instance}} {{process}} {{pid}}")]),
        panel("Database connections in use", [("stockpulse_db_pool_connections_in_use", "{{instance}}"),
                                              (f"rate(stockpulse_db_pool_checkouts_total{RATE})",
                                               "checkouts/s {{instance}}")]),
        panel("Redis memory", [("stockpulse_redis_memory_used_bytes", "used"),
                               ("stockpulse_redis_maxmemory_bytes", "maxmemory (0: no limit)")], unit="bytes",
              description="RedBeat schedules, the DLQ and stored payloads live here: Redis runs noeviction."),
        panel("Redis connected clients", [("stockpulse_redis_connected_clients", "clients")]),
        panel("Scrape targets up", [("up", "{{job}} {{instance}}")], kind="stat", width=24, height=4,
              mappings=UP_DOWN),
        panel("Exporter memory", [('process_resident_memory_bytes{job="stockpulse-exporter"}', "{{instance}}")],
              unit="bytes"),
    ],
)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, board in (("pipelines", PIPELINES), ("celery", CELERY), ("resources", RESOURCES)):
        (OUT / f"{name}.json").write_text(json.dumps(board, indent=2) + "\n")


if __name__ == "__main__":
    main()
