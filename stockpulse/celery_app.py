"""The Celery application and its production configuration. Each choice says why."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from stockpulse.config import Settings, get_settings
from stockpulse.routing import TASK_QUEUES, route_task


def celery_config(settings: Settings) -> dict[str, Any]:
    visibility = int(settings.celery.get("visibility_timeout_s", 3600))
    return {
        "broker_url": settings.redis_url,
        # Results are kept briefly for Flower and `celery result`; runs are tracked in pipeline_runs.
        "result_backend": settings.redis_url,
        "result_expires": int(settings.celery.get("result_expires_s", 86400)),
        # JSON only: pickle from a broker is remote code execution waiting to happen.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the stage finished, and requeue when a worker child dies mid-task: every stage is
        # idempotent, so running twice is safe and losing a run is not.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: long loads must not hold queued work hostage.
        "worker_prefetch_multiplier": 1,
        # Redis redelivers unacked messages after this; it must exceed the longest retry countdown, or a
        # retry waiting in a worker would be delivered twice.
        # Unacked messages of a dead worker are looked for every unacked_restore_interval seconds (kombu's
        # default throttle would make that every 10th look, ~100 s).
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": int(settings.celery.get("unacked_restore_interval_s", 10)),
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "broker_connection_retry_on_startup": True,
        "task_queues": TASK_QUEUES,
        "task_default_queue": "maintenance",
        "task_routes": (route_task,),
        "task_create_missing_queues": False,
        # Events feed Flower and the Celery exporter.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "timezone": settings.timezone,
        "enable_utc": True,
        # RedBeat, restoring its schedules by itself if Redis comes back empty (stockpulse/schedule.py).
        "beat_scheduler": "stockpulse.schedule:SelfHealingRedBeatScheduler",
        "redbeat_redis_url": settings.redis_url,
        "redbeat_key_prefix": "stockpulse:redbeat:",
        # RedBeat's lock keeps a second beat from double-scheduling; it expires if beat dies.
        "redbeat_lock_timeout": int(settings.celery.get("beat_lock_timeout_s", 150)),
        "beat_max_loop_interval": int(settings.celery.get("beat_max_loop_interval_s", 30)),
        "worker_hijack_root_logger": False,
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("stockpulse")
    celery.conf.update(celery_config(settings))
    celery.conf.beat_schedule = _beat_schedule()
    # Imported by workers at start-up (not here: the task modules import this app).
    celery.conf.imports = ("stockpulse.pipeline.tasks", "stockpulse.reliability.tasks", "stockpulse.streams.tasks")
    return celery


def _beat_schedule() -> dict[str, Any]:
    from stockpulse.schedule import load_beat_schedule

    return load_beat_schedule()


app = create_app()


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Our handlers instead of Celery's: JSON lines (or console) with task and run ids on every record."""
    from stockpulse.observability.logging import configure_logging

    conf = get_settings().logging
    level = conf.get("level") or (loglevel if isinstance(loglevel, str) else "INFO")
    configure_logging(level, conf.get("format", "json"))


@signals.worker_process_init.connect
@signals.worker_init.connect
def _tune_gc(**_: Any) -> None:
    """Stages allocate hundreds of thousands of small objects per batch; with the default thresholds the
    cyclic collector keeps rescanning everything the worker imported. Freeze start-up objects out of its
    reach and collect the young generation less often (measured: 10x faster payload decoding)."""
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """In the worker's main process, before the pool forks: multiprocess metrics and their endpoint."""
    from pathlib import Path

    from stockpulse.observability import metrics

    settings = get_settings()
    port = int(settings.metrics.get("port", 0))
    if not port:
        return
    directory = Path(settings.var_dir) / settings.metrics.get("multiproc_dir", "metrics") / f"worker-{os.getpid()}"
    metrics.enable_multiprocess(directory, fresh=True)
    metrics.serve(port, settings.metrics.get("address", "0.0.0.0"))
    metrics.initialise()  # zero series, written once by the main process (its file is summed too)


@signals.worker_process_shutdown.connect
def _pool_process_exited(pid: int | None = None, **_: Any) -> None:
    from stockpulse.observability import tracing

    tracing.force_flush(2)  # a pool process ends without atexit handlers: its last spans go now
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from stockpulse.observability import metrics

        metrics.process_exited(pid or os.getpid())


@signals.worker_init.connect
def _sentry_in_worker(**_: Any) -> None:
    """Before the pool forks, so every process reports (the SDK restarts its sender after a fork)."""
    from stockpulse.observability.sentry import init_sentry

    init_sentry(component="worker")


@signals.worker_init.connect
def _tracing_in_worker(**_: Any) -> None:
    """Before the pool forks: the SDK's batch span processor restarts its export thread in each child."""
    from stockpulse.observability.tracing import init_tracing

    init_tracing("worker")


@signals.beat_init.connect
def _sentry_in_beat(**_: Any) -> None:
    """Beat's check-ins turn each RedBeat entry into a Sentry cron monitor."""
    from stockpulse.observability.sentry import init_sentry

    init_sentry(component="beat")


@signals.worker_init.connect
@signals.beat_init.connect
def _require_provider_keys(**_: Any) -> None:
    """Workers and beat need the API keys of enabled pipelines; refuse to start without them."""
    import sys

    from stockpulse.config import require_secrets
    from stockpulse.errors import ConfigError

    try:
        require_secrets(get_settings())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(ConfigError.exit_code)  # a plain exit here would be caught and logged by Celery
