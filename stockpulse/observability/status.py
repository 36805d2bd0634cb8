"""One snapshot of the system's health, read from the database and Redis.

Both ``stockpulse status`` (the quick terminal look) and the exporter's ``stockpulse_*`` gauges (freshness,
queue depth, DLQ depth, quarantine, breakers, quotas, Redis) come from here, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from stockpulse.config import QUEUES, Settings, get_settings
from stockpulse.observability.freshness import Freshness, assess

BREAKER_STATE_VALUE = {"closed": 0, "half-open": 1, "open": 2}


@dataclass
class PipelineStatus:
    name: str
    data_type: str
    provider: str
    queue: str
    enabled: bool
    last_run_id: str | None = None
    last_status: str | None = None
    last_trigger: str | None = None
    last_finished_at: datetime | None = None
    last_records_loaded: int | None = None
    last_error: str | None = None
    last_success_at: datetime | None = None
    newest_record_at: datetime | None = None
    quarantined: int = 0
    missing_sessions: int | None = None  # at the last daily gap detection (daily bars only)
    # The newest moment its schedules fired at least exporter.run_grace_s ago (a success is owed since).
    schedule_due_at: datetime | None = None
    freshness: Freshness | None = None  # what the calendar expects by now (enabled pipelines)

    def freshness_s(self, now: datetime) -> float | None:
        return None if self.newest_record_at is None else (now - self.newest_record_at).total_seconds()


@dataclass
class ProviderStatus:
    name: str
    breaker_state: str
    breaker_failures: int
    quota: str | None
    quota_remaining: int | None


@dataclass
class Snapshot:
    taken_at: datetime
    pipelines: list[PipelineStatus]
    queues: dict[str, int]
    dlq_depth: int
    providers: list[ProviderStatus]
    redis: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def newest_by_data_type(self) -> dict[str, datetime]:
        newest: dict[str, datetime] = {}
        for p in self.pipelines:
            if p.newest_record_at and (p.data_type not in newest or p.newest_record_at > newest[p.data_type]):
                newest[p.data_type] = p.newest_record_at
        return newest


def queue_lengths(client: Any, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages waiting in each Celery queue on the Redis broker, priority sub-queues included.

    kombu's Redis transport keeps a message sent with a priority in a list of its own, named the queue
    plus ``\\x06\\x16`` plus the priority step (3, 6, 9 by default); LLEN of the bare queue name misses them.
    """
    from kombu.transport.redis import Channel

    steps_used = Channel.priority_steps  # not overridden in our broker_transport_options
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for step in steps_used:
            pipe.llen(f"{queue}{Channel.sep}{step}" if step else queue)
    counts = pipe.execute()
    steps = len(steps_used)
    return {queue: int(sum(counts[i * steps:(i + 1) * steps])) for i, queue in enumerate(queues)}


def take_snapshot(settings: Settings | None = None) -> Snapshot:
    """Everything ``stockpulse status`` shows. A part that cannot be read (database or Redis down) is left
    empty and named in ``problems``, so the rest still shows."""
    settings = settings or get_settings()
    now = datetime.now(UTC)
    pipelines = {name: PipelineStatus(name, p.data_type, p.provider, p.queue, p.enabled)
                 for name, p in sorted(settings.pipelines.items())}
    snapshot = Snapshot(now, list(pipelines.values()), {}, 0, [])
    try:
        marks = _read_database(pipelines)
    except Exception as exc:
        snapshot.problems.append(f"database: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    else:
        for name, status in pipelines.items():
            if status.enabled:
                try:
                    status.freshness = assess(settings.pipelines[name], marks.get(name, {}), now)
                except Exception as exc:  # e.g. a symbol file gone: say so, keep the rest
                    snapshot.problems.append(f"freshness of {name}: {type(exc).__name__}: {exc}")
    try:
        _read_redis(snapshot, settings)
    except Exception as exc:
        snapshot.problems.append(f"redis: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return snapshot


def _read_database(pipelines: dict[str, PipelineStatus]) -> dict[str, dict[str, datetime]]:
    """Fills the pipelines' run and data facts; returns each pipeline's watermark per symbol."""
    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import pipeline_runs as runs_t
    from stockpulse.db.models import quarantine as quarantine_t
    from stockpulse.db.models import watermarks as watermarks_t

    with get_engine().connect() as conn:
        # The newest run per pipeline, through the (pipeline, created_at) index.
        newest = (select(runs_t.c.pipeline, func.max(runs_t.c.created_at).label("created_at"))
                  .group_by(runs_t.c.pipeline).subquery())
        last_runs = conn.execute(
            select(runs_t.c.pipeline, runs_t.c.id, runs_t.c.status, runs_t.c.trigger, runs_t.c.finished_at,
                   runs_t.c.records_loaded, runs_t.c.error_message)
            .join(newest, (runs_t.c.pipeline == newest.c.pipeline) & (runs_t.c.created_at == newest.c.created_at)))
        for row in last_runs:
            if (p := pipelines.get(row.pipeline)) is not None:
                p.last_run_id, p.last_status, p.last_trigger = row.id, row.status, row.trigger
                p.last_finished_at, p.last_records_loaded = row.finished_at, row.records_loaded
                p.last_error = row.error_message
        successes = conn.execute(select(runs_t.c.pipeline, func.max(runs_t.c.finished_at))
                                 .where(runs_t.c.status.in_(("succeeded", "partial")))
                                 .group_by(runs_t.c.pipeline))
        for name, finished_at in successes:
            if name in pipelines:
                pipelines[name].last_success_at = finished_at
        # Watermarks hold each pipeline's newest loaded record per symbol: a small table, unlike the data.
        marks: dict[str, dict[str, datetime]] = {}
        for name, symbol, last_ts in conn.execute(select(watermarks_t.c.pipeline, watermarks_t.c.symbol,
                                                         watermarks_t.c.last_ts)):
            if name in pipelines and last_ts is not None:
                last_ts = last_ts if last_ts.tzinfo else last_ts.replace(tzinfo=UTC)  # SQLite drops the zone
                marks.setdefault(name, {})[symbol] = last_ts
        for name, by_symbol in marks.items():
            pipelines[name].newest_record_at = max(by_symbol.values())
        for name, count in conn.execute(select(quarantine_t.c.pipeline, func.count())
                                        .group_by(quarantine_t.c.pipeline)):
            if name in pipelines:
                pipelines[name].quarantined = int(count)
    return marks


def _read_redis(snapshot: Snapshot, settings: Settings) -> None:
    from stockpulse.providers import PROVIDERS
    from stockpulse.redis_conn import redis_client
    from stockpulse.reliability import breaker, dlq, quotas

    client = redis_client(settings.redis_url)
    snapshot.queues = queue_lengths(client)
    snapshot.dlq_depth = dlq.depth()
    from stockpulse.pipeline.gaps import recorded_missing

    missing = recorded_missing(client)
    for pipe in snapshot.pipelines:
        pipe.missing_sessions = missing.get(pipe.name)
    _read_schedules(snapshot, settings)
    info = client.info()
    snapshot.redis = {key: info.get(key) for key in ("used_memory", "maxmemory", "connected_clients",
                                                     "maxmemory_policy")}
    used = {p.provider for p in settings.pipelines.values()} | set(settings.providers)
    for name in sorted(used & set(PROVIDERS)):
        state, failures = breaker.state(name)
        quota = quotas.status(name)
        snapshot.providers.append(ProviderStatus(name, state, failures, quota.limit, quota.remaining))


def _read_schedules(snapshot: Snapshot, settings: Settings) -> None:
    """Each pipeline's newest schedule fire that a success is owed for (see stockpulse.schedule_due)."""
    from datetime import timedelta

    from stockpulse.schedule_due import last_due
    from stockpulse.schedules import Schedules

    grace = timedelta(seconds=float(settings.exporter.get("run_grace_s", 1800)))
    by_name = {p.name: p for p in snapshot.pipelines}
    for info in Schedules().list():
        pipe = by_name.get(info.kwargs.get("pipeline", ""))
        if pipe is None or not info.enabled or not pipe.enabled:
            continue
        due = last_due(info.celery_schedule, info.kwargs, snapshot.taken_at, grace, settings.timezone)
        if due is not None and (pipe.schedule_due_at is None or due > pipe.schedule_due_at):
            pipe.schedule_due_at = due
