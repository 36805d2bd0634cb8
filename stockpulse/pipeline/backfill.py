"""Resumable backfills: a date range cut into chunks, one run (trigger ``backfill``) per chunk.

A chunk is known by its pipeline, first and last day and symbols; an earlier backfill run over exactly that
chunk says what became of it. Re-running the same backfill after an interruption therefore enqueues only the
chunks that have not succeeded, and ``reprocess`` chooses, as Airflow's backfill does, whether failed
(default) or all earlier chunks run again. Every chunk's batches go to the pipeline's queue, so any worker
consuming that queue takes them; requests are throttled by the shared provider quota
(``stockpulse.reliability.quotas``), and the plan says how long that quota makes the backfill take at best.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from sqlalchemy import select

from stockpulse.config import get_settings
from stockpulse.db.engine import get_engine
from stockpulse.db.models import pipeline_runs as runs_t
from stockpulse.errors import ConfigError

Reprocess = Literal["none", "failed", "all"]
REPROCESS: tuple[str, ...] = ("none", "failed", "all")
IN_PROGRESS = ("queued", "running")
DONE = ("succeeded", "partial")


@dataclass(frozen=True)
class Chunk:
    start: date
    end: date
    symbols: tuple[str, ...]
    requests: int  # provider requests it needs, about (the fetcher's estimate)
    previous: Any | None  # the newest earlier backfill run over exactly this chunk
    enqueue: bool
    reason: str  # why it is enqueued or skipped

    @property
    def days(self) -> str:
        return f"{self.start}..{self.end}"


@dataclass
class BackfillPlan:
    pipeline: str
    provider: str
    reprocess: str
    chunks: list[Chunk] = field(default_factory=list)
    rate_limit: str | None = None

    @property
    def to_enqueue(self) -> list[Chunk]:
        return [c for c in self.chunks if c.enqueue]

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.to_enqueue)

    def quota_seconds(self) -> float | None:
        """The least time the provider's quota lets the chunks to enqueue take (None without a quota)."""
        if not self.rate_limit:
            return None
        from limits import parse

        item = parse(self.rate_limit)
        windows = max(0, -(-self.requests // item.amount) - 1)  # the first window's requests go at once
        return float(windows * item.get_expiry())

    def summary(self) -> str:
        text = (
            f"{len(self.to_enqueue)} of {len(self.chunks)} chunks to enqueue "
            f"({len(self.chunks) - len(self.to_enqueue)} skipped: done or in progress), "
            f"about {self.requests} {self.provider} requests"
        )
        seconds = self.quota_seconds()
        if seconds is not None:
            text += f"; at its quota of {self.rate_limit} that takes at least {_duration(seconds)}"
        return text


def plan_backfill(
    pipeline: str,
    start: date,
    end: date,
    *,
    symbols: list[str] | None = None,
    chunk_days: int | None = None,
    reprocess: str = "failed",
) -> BackfillPlan:
    """The chunks of a backfill and, from earlier backfill runs, which of them to enqueue."""
    from stockpulse.providers import PROVIDERS, Query, get_fetcher
    from stockpulse.reliability.quotas import rate_for

    if reprocess not in REPROCESS:
        raise ConfigError(f"reprocess must be one of {', '.join(REPROCESS)}, not {reprocess!r}")
    if start > end:
        raise ConfigError(f"start {start} is after end {end}")
    pipe = get_settings().pipeline(pipeline)
    if pipe.data_type not in PROVIDERS[pipe.provider].fetchers:
        raise ConfigError(f"pipeline {pipeline!r} has no REST fetcher to backfill from")
    chosen = tuple(symbols) if symbols else pipe.symbols
    if not chosen:
        raise ConfigError(f"pipeline {pipeline!r} has no symbols")
    step = timedelta(days=chunk_days or int(pipe.options.get("backfill_chunk_days", 365)))
    fetcher = get_fetcher(pipe.provider, pipe.data_type, with_client=False)
    earlier = _earlier_runs(pipeline)
    plan = BackfillPlan(pipeline, pipe.provider, reprocess, rate_limit=rate_for(pipe.provider))
    day = start
    while day <= end:
        last = min(day + step - timedelta(days=1), end)
        requests = sum(
            fetcher.requests_needed(Query(chosen[i : i + pipe.batch_size], pipe.interval, day, last))
            for i in range(0, len(chosen), pipe.batch_size)
        )
        previous = earlier.get((day.isoformat(), last.isoformat(), tuple(sorted(chosen))))
        enqueue, reason = _decide(previous, reprocess)
        plan.chunks.append(Chunk(day, last, chosen, requests, previous, enqueue, reason))
        day = last + timedelta(days=1)
    return plan


def enqueue(plan: BackfillPlan) -> list[tuple[Chunk, str]]:
    """Start one run per chunk to enqueue, in date order; returns (chunk, run id) pairs."""
    from stockpulse.pipeline.runs import start_run

    return [
        (
            chunk,
            start_run(
                plan.pipeline,
                symbols=list(chunk.symbols),
                trigger="backfill",
                start=chunk.start,
                end=chunk.end,
            ),
        )
        for chunk in plan.to_enqueue
    ]


def _decide(previous: Any | None, reprocess: str) -> tuple[bool, str]:
    if previous is None:
        return True, "new"
    status = previous.status
    if status in IN_PROGRESS:
        # Never twice at once: the run already queued or running will finish it.
        return False, f"in progress (run {previous.id} {status})"
    if reprocess == "all":
        return True, f"reprocess all (was {status})"
    if status in DONE:
        return False, f"done (run {previous.id} {status}, {previous.records_loaded} rows)"
    if reprocess == "failed":
        return True, f"run {previous.id} {status}: again"
    return False, f"{status} earlier (run {previous.id}); --reprocess failed runs it again"


def _earlier_runs(pipeline: str) -> dict[tuple[str, str, tuple[str, ...]], Any]:
    """The newest backfill run per (start, end, sorted symbols) of ``pipeline``."""
    query = (
        select(runs_t.c.id, runs_t.c.status, runs_t.c.params, runs_t.c.records_loaded, runs_t.c.created_at)
        .where(runs_t.c.pipeline == pipeline, runs_t.c.trigger == "backfill")
        .order_by(runs_t.c.created_at)
    )
    found: dict[tuple[str, str, tuple[str, ...]], Any] = {}
    with get_engine().connect() as conn:
        for row in conn.execute(query):
            params = row.params or {}
            key = (params.get("start"), params.get("end"), tuple(sorted(params.get("symbols") or ())))
            found[key] = row  # ordered by creation: the newest wins
    return found


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
