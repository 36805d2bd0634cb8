"""``stockpulse exporter``: Celery events and the system's health as Prometheus metrics (default port 9808).

The ``celery_*`` metrics have the names and labels of the widely used celery-exporter, so its community
dashboards and alerts work unchanged, with two corrections:

- ``celery_queue_length`` counts the Redis priority sub-queues as well (LLEN of the queue name alone misses
  every message sent with a priority);
- ``celery_worker_up`` drops to 0 when a worker has sent no event for ``exporter.worker_timeout_s``, so a
  worker killed with SIGKILL (which says no goodbye) reads as down within that time. ``hostname`` is the
  worker's full node name (``historical@host``): several worker groups share a host here. On
  ``celery_task_sent_total`` it is the publishing host only (publishers are many short-lived processes).

It also exports the ``stockpulse_*`` gauges that one process should compute for the whole system rather
than every worker for itself: freshness, DLQ depth, quarantine size, breaker and quota state, Redis memory
and clients (see :mod:`stockpulse.observability.status`).
"""

from __future__ import annotations

import ast
import logging
import threading
import time
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from stockpulse.config import QUEUES, get_settings

log = logging.getLogger("stockpulse.exporter")

TASK_EVENTS = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed", "task-rejected",
               "task-revoked", "task-retried")
RUNTIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class CeleryEventExporter:
    """Consumes the event stream of one Celery app and keeps the celery-exporter metrics up to date."""

    def __init__(self, app: Celery, *, registry: CollectorRegistry, worker_timeout_s: float = 30.0,
                 inspect_interval_s: float = 30.0, queues: tuple[str, ...] = QUEUES):
        self.app = app
        self.state = app.events.State(max_tasks_in_memory=10_000)
        self.worker_timeout_s = worker_timeout_s
        self.inspect_interval_s = inspect_interval_s
        self.queues = queues
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}  # worker node name -> monotonic time of its last event
        self._offline: set[str] = set()
        self._active: dict[str, int] = {}
        self._worker_queues: dict[str, set[str]] = {}
        self._queues_checked_at = 0.0
        labels = ["name", "hostname", "queue_name"]
        self.counters = {
            event: Counter(f"celery_{event.replace('-', '_')}", f"Celery {event} events",
                           labels + (["exception"] if event == "task-failed" else []), registry=registry)
            for event in TASK_EVENTS
        }
        self.runtime = Histogram("celery_task_runtime", "Task runtime (from task-succeeded events)", labels,
                                 registry=registry, buckets=RUNTIME_BUCKETS)
        registry.register(_CallbackCollector(self.collect_worker_and_queue_metrics))

    # ------------------------------------------------------------------------------------------ events

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        with self._lock:
            if kind.startswith("worker-"):
                self._worker_event(kind, event)
            elif kind in self.counters:
                self._task_event(kind, event)

    def _worker_event(self, kind: str, event: dict[str, Any]) -> None:
        worker = event.get("hostname", "unknown")
        self.state.event(event)
        if kind == "worker-offline":
            self._offline.add(worker)
            self._active[worker] = 0
            return
        if worker not in self._last_seen or worker in self._offline:
            self._queues_checked_at = 0.0  # a worker (re)appeared: ask again which queues it consumes
        self._offline.discard(worker)
        self._last_seen[worker] = time.monotonic()
        if kind == "worker-heartbeat":
            self._active[worker] = int(event.get("active") or 0)

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        self.state.event(event)
        task = self.state.tasks.get(event.get("uuid"))
        name = (task.name if task is not None else None) or event.get("name") or "unknown"
        hostname = event.get("hostname") or (task.hostname if task is not None else None) or "unknown"
        if kind == "task-sent":
            # Sent by whichever process published the task (gen<pid>@host for a non-worker): the host
            # alone keeps the label's values bounded, as celery-exporter does.
            hostname = hostname.rpartition("@")[2] or hostname
        else:
            self._last_seen[hostname] = time.monotonic()
            self._offline.discard(hostname)
        labels = {"name": name, "hostname": hostname, "queue_name": self._queue_of(task, event)}
        if kind == "task-failed":
            self.counters[kind].labels(**labels, exception=_exception_name(event.get("exception", ""))).inc()
        else:
            self.counters[kind].labels(**labels).inc()
        if kind != "task-sent":
            # As celery-exporter does: the worker-side counters of this task exist (at 0) from its first
            # event, so rate() and alerts on them work before the first failure.
            for other, counter in self.counters.items():
                if other not in (kind, "task-sent"):
                    (counter.labels(**labels, exception="") if other == "task-failed"
                     else counter.labels(**labels)).inc(0)
        if kind == "task-succeeded" and event.get("runtime") is not None:
            self.runtime.labels(**labels).observe(float(event["runtime"]))

    def _queue_of(self, task: Any, event: dict[str, Any]) -> str:
        """task-sent names the queue; later events do not, so the State remembers it. When the exporter
        missed the task-sent, routing is worked out as the app would (our router needs the kwargs)."""
        queue = event.get("queue") or (getattr(task, "routing_key", None) if task is not None else None)
        if queue:
            return str(queue)
        name = (task.name if task is not None else None) or event.get("name") or ""
        kwargs: Any = {}
        text = (getattr(task, "kwargs", None) if task is not None else None) or event.get("kwargs") or ""
        try:
            kwargs = ast.literal_eval(text) if isinstance(text, str) and text else {}
        except (ValueError, SyntaxError):
            kwargs = {}
        from stockpulse.routing import route_task

        route = route_task(name, (), kwargs if isinstance(kwargs, dict) else {}, {})
        return route["queue"] if route else self.app.conf.task_default_queue

    # ---------------------------------------------------------------------------------- scrape time

    def worker_up(self) -> dict[str, int]:
        now = time.monotonic()
        return {worker: int(worker not in self._offline and now - seen <= self.worker_timeout_s)
                for worker, seen in self._last_seen.items()}

    def collect_worker_and_queue_metrics(self) -> list[Any]:
        with self._lock:
            up = self.worker_up()
            active = {w: (self._active.get(w, 0) if alive else 0) for w, alive in up.items()}
        up_family = GaugeMetricFamily("celery_worker_up", "1 if the worker sent an event within the timeout",
                                      labels=["hostname"])
        active_family = GaugeMetricFamily("celery_worker_tasks_active", "Tasks the worker is running now",
                                          labels=["hostname"])
        for worker in sorted(up):
            up_family.add_metric([worker], up[worker])
            active_family.add_metric([worker], active[worker])
        queue_family = GaugeMetricFamily("celery_queue_length", "Messages waiting in the broker queue "
                                         "(Redis priority sub-queues included)", labels=["queue_name"])
        workers_family = GaugeMetricFamily("celery_active_worker_count", "Live workers consuming the queue",
                                           labels=["queue_name"])
        from stockpulse.observability.status import queue_lengths
        from stockpulse.redis_conn import redis_client

        try:
            for queue, length in queue_lengths(redis_client(), self.queues).items():
                queue_family.add_metric([queue], length)
        except Exception as exc:
            log.warning("could not read queue lengths: %s", exc)
        consumers = self._consumers([w for w, alive in up.items() if alive])
        for queue in self.queues:
            workers_family.add_metric([queue], sum(1 for w, alive in up.items() if alive
                                                   and queue in consumers.get(w, ())))
        return [up_family, active_family, queue_family, workers_family]

    def _consumers(self, alive: list[str]) -> dict[str, set[str]]:
        """Which queues each live worker consumes (asked with a broadcast, at most every inspect_interval_s
        or when a worker appears)."""
        now = time.monotonic()
        if alive and (now - self._queues_checked_at > self.inspect_interval_s
                      or any(w not in self._worker_queues for w in alive)):
            self._queues_checked_at = now
            try:
                replies = self.app.control.inspect(destination=alive, timeout=1.0).active_queues() or {}
                for worker, queues in replies.items():
                    self._worker_queues[worker] = {q["name"] for q in queues}
            except Exception as exc:
                log.warning("could not ask the workers for their queues: %s", exc)
        return self._worker_queues

    # ------------------------------------------------------------------------------------------- loop

    def capture_forever(self, stop: threading.Event) -> None:
        """Consume events until ``stop`` is set, reconnecting after a broker outage."""
        handlers = {"*": self.handle}
        current: list[Any] = []

        def stop_receiver() -> None:  # the receiver checks should_stop at least once a second
            stop.wait()
            for receiver in current:
                receiver.should_stop = True

        threading.Thread(target=stop_receiver, daemon=True, name="events-stop").start()
        while not stop.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    receiver = self.app.events.Receiver(connection, handlers=handlers)
                    current[:] = [receiver]
                    log.info("consuming Celery events from the broker")
                    # wakeup: ask every worker for a heartbeat now, so live workers show up at once.
                    receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:  # broker gone: wait and reconnect
                if stop.is_set():
                    return
                log.warning("event stream lost (%s: %s); reconnecting in 2s", type(exc).__name__, exc)
                stop.wait(2.0)


class StatusCollector:
    """The ``stockpulse_*`` gauges computed once for the whole system, from one snapshot per scrape."""

    def __init__(self, min_interval_s: float = 5.0):
        self.min_interval_s = min_interval_s
        self._cached: tuple[float, list[Any]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> list[Any]:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.min_interval_s:
                return self._cached[1]
            families = self._families()
            self._cached = (time.monotonic(), families)
            return families

    def _families(self) -> list[Any]:
        from stockpulse.observability.status import BREAKER_STATE_VALUE, take_snapshot

        snap = take_snapshot()
        now = snap.taken_at
        # The queue lets Alertmanager silence a pipeline's alerts while no worker consumes its queue.
        pipe_labels = ["pipeline", "data_type", "provider", "queue"]
        g = {
            "fresh_type": GaugeMetricFamily("stockpulse_data_freshness_seconds",
                                            "Age of the newest stored record of the data type", labels=["data_type"]),
            "newest": GaugeMetricFamily("stockpulse_newest_record_timestamp_seconds",
                                        "Timestamp of the newest record the pipeline loaded", labels=pipe_labels),
            "quarantine": GaugeMetricFamily("stockpulse_quarantine_records", "Records in quarantine",
                                            labels=pipe_labels),
            "last_status": GaugeMetricFamily("stockpulse_pipeline_last_run_status",
                                             "1 for the status of the pipeline's newest run",
                                             labels=[*pipe_labels, "status"]),
            "enabled": GaugeMetricFamily("stockpulse_pipeline_enabled", "1 if the pipeline is enabled",
                                         labels=pipe_labels),
            "dlq": GaugeMetricFamily("stockpulse_dlq_depth", "Entries in the dead-letter queue"),
            "missing": GaugeMetricFamily("stockpulse_missing_sessions",
                                         "Sessions the exchange calendar expects that the pipeline's daily bars "
                                         "lack, at the last daily gap detection", labels=pipe_labels),
            "last_success": GaugeMetricFamily("stockpulse_pipeline_last_success_timestamp_seconds",
                                              "When a run of the pipeline last succeeded or was partial (0: "
                                              "never), from the database", labels=pipe_labels),
            "due": GaugeMetricFamily("stockpulse_schedule_last_due_timestamp_seconds",
                                     "The newest fire of the pipeline's schedules at least exporter.run_grace_s "
                                     "old: a success is owed since then", labels=pipe_labels),
            "expected": GaugeMetricFamily("stockpulse_data_expected",
                                          "1 when the pipeline's exchange calendar expects new data by now",
                                          labels=pipe_labels),
            "overdue": GaugeMetricFamily("stockpulse_data_overdue_seconds",
                                         "How long data the calendar expects has been due (0: on time; +Inf: "
                                         "none ever loaded)", labels=pipe_labels),
            "stale_symbols": GaugeMetricFamily("stockpulse_data_stale_symbols",
                                               "Symbols lacking the daily bar of the last settled session",
                                               labels=pipe_labels),
            "breaker": GaugeMetricFamily("stockpulse_circuit_breaker_state",
                                         "Provider circuit breaker: 0 closed, 1 half-open, 2 open",
                                         labels=["provider"]),
            "breaker_failures": GaugeMetricFamily("stockpulse_circuit_breaker_failures",
                                                  "Consecutive transient failures counted by the breaker",
                                                  labels=["provider"]),
            "quota": GaugeMetricFamily("stockpulse_provider_quota_remaining",
                                       "Requests left in the provider's current rate-limit window",
                                       labels=["provider"]),
            "redis_mem": GaugeMetricFamily("stockpulse_redis_memory_used_bytes", "Redis used_memory"),
            "redis_max": GaugeMetricFamily("stockpulse_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)"),
            "redis_clients": GaugeMetricFamily("stockpulse_redis_connected_clients", "Redis connected_clients"),
            "up": GaugeMetricFamily("stockpulse_status_source_up",
                                    "1 if the exporter could read the source (database, redis)", labels=["source"]),
        }
        for source in ("database", "redis"):
            g["up"].add_metric([source], 0 if any(p.startswith(source) for p in snap.problems) else 1)
        for data_type, newest in sorted(snap.newest_by_data_type().items()):
            g["fresh_type"].add_metric([data_type], (now - newest).total_seconds())
        for p in snap.pipelines:
            labels = [p.name, p.data_type, p.provider, p.queue]
            g["enabled"].add_metric(labels, int(p.enabled))
            g["quarantine"].add_metric(labels, p.quarantined)
            if p.newest_record_at:
                g["newest"].add_metric(labels, p.newest_record_at.timestamp())
            if p.last_status:
                g["last_status"].add_metric([*labels, p.last_status], 1)
            if p.missing_sessions is not None:
                g["missing"].add_metric(labels, p.missing_sessions)
            if p.enabled and "database" not in " ".join(snap.problems):
                g["last_success"].add_metric(labels, p.last_success_at.timestamp() if p.last_success_at else 0)
            if p.schedule_due_at is not None:
                g["due"].add_metric(labels, p.schedule_due_at.timestamp())
            if p.freshness is not None:
                g["expected"].add_metric(labels, int(p.freshness.expected))
                g["overdue"].add_metric(labels, p.freshness.overdue_s)
                g["stale_symbols"].add_metric(labels, p.freshness.stale_symbols)
        if not any(p.startswith("redis") for p in snap.problems):
            g["dlq"].add_metric([], snap.dlq_depth)
            for prov in snap.providers:
                g["breaker"].add_metric([prov.name], BREAKER_STATE_VALUE.get(prov.breaker_state, 2))
                g["breaker_failures"].add_metric([prov.name], prov.breaker_failures)
                if prov.quota_remaining is not None:
                    g["quota"].add_metric([prov.name], prov.quota_remaining)
            g["redis_mem"].add_metric([], snap.redis.get("used_memory") or 0)
            g["redis_max"].add_metric([], snap.redis.get("maxmemory") or 0)
            g["redis_clients"].add_metric([], snap.redis.get("connected_clients") or 0)
        return list(g.values())


class _CallbackCollector:
    def __init__(self, callback: Any):
        self.callback = callback

    def collect(self) -> Any:
        return self.callback()


def _exception_name(text: str) -> str:
    """celery-exporter's label: the class name from the exception's repr (``ValueError('x')``)."""
    head = text.split("(", 1)[0].strip()
    return head if head.isidentifier() else "UnknownException"


def build_registry(app: Celery, settings: Any = None) -> tuple[CollectorRegistry, CeleryEventExporter]:
    settings = settings or get_settings()
    conf = settings.exporter
    registry = CollectorRegistry()
    exporter = CeleryEventExporter(app, registry=registry, worker_timeout_s=float(conf["worker_timeout_s"]),
                                   inspect_interval_s=float(conf["inspect_interval_s"]))
    registry.register(StatusCollector(min_interval_s=float(conf["status_interval_s"])))
    from prometheus_client import PlatformCollector, ProcessCollector

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry, exporter


def serve(port: int | None = None, address: str | None = None) -> None:
    """Run the exporter in the foreground until SIGINT/SIGTERM."""
    import signal

    from prometheus_client import start_http_server

    from stockpulse.celery_app import app
    from stockpulse.observability.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.logging.get("level") or "INFO", settings.logging.get("format", "json"))
    port = int(port if port is not None else settings.exporter["port"])
    address = address or settings.exporter["address"]
    registry, exporter = build_registry(app, settings)
    server, thread = start_http_server(port, addr=address, registry=registry)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("exporter serving on http://%s:%d/metrics", address, port, extra={"port": port})
    consumer = threading.Thread(target=exporter.capture_forever, args=(stop,), daemon=True, name="events")
    consumer.start()
    while not stop.wait(0.5):
        pass
    server.shutdown()
    consumer.join(5)


