"""``pipeline_runs`` bookkeeping and the start of a run.

A run is split into batches of symbols; each batch is one fetch -> transform -> load chain. Stages write
their batch's row; the run row is recomputed from its batches, under a row lock, after every change, so
concurrent batches and redelivered stages always leave consistent totals.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from stockpulse.config import PipelineSettings, get_settings
from stockpulse.db.engine import get_engine
from stockpulse.db.models import STAGES
from stockpulse.db.models import pipeline_run_batches as batches_t
from stockpulse.db.models import pipeline_runs as runs_t
from stockpulse.db.models import watermarks as watermarks_t
from stockpulse.errors import ConfigError, utcnow
from stockpulse.observability import tracing

TRIGGERS = ("schedule", "manual", "backfill", "replay", "gap_fill")
FINAL = ("succeeded", "partial", "failed")
# `stockpulse run --full-refresh` starts here: before any provider's history (EDGAR's XBRL data starts 2009).
FULL_REFRESH_START = date(1990, 1, 1)


@dataclass(frozen=True)
class BatchPlan:
    batch_no: int
    symbols: tuple[str, ...]
    start: date
    end: date


def plan_batches(pipe: PipelineSettings, symbols: tuple[str, ...], start: date | None, end: date | None,
                 conn: Connection) -> list[BatchPlan]:
    """Split symbols into batches and choose each batch's date range.

    Without an explicit start, the range begins at the batch's oldest watermark minus a small overlap
    (providers correct recent bars), or ``lookback_days`` back for symbols never loaded.
    """
    today = datetime.now(UTC).date()
    end = end or today
    overlap = timedelta(days=int(pipe.options.get("overlap_days", 3)))
    lookback = timedelta(days=int(pipe.options.get("lookback_days", 365)))
    marks: dict[str, datetime] = {}
    if start is None:
        rows = conn.execute(select(watermarks_t.c.symbol, watermarks_t.c.last_ts).where(
            watermarks_t.c.pipeline == pipe.name, watermarks_t.c.symbol.in_(symbols)))
        marks = {r.symbol: r.last_ts for r in rows}
    plans = []
    for i in range(0, len(symbols), pipe.batch_size):
        chunk = symbols[i:i + pipe.batch_size]
        if start is not None:
            chunk_start = start
        else:
            starts = [(marks[s].date() - overlap) if s in marks else (end - lookback) for s in chunk]
            chunk_start = min(starts)
        plans.append(BatchPlan(len(plans), chunk, min(chunk_start, end), end))
    return plans


def start_run(pipeline: str, *, symbols: list[str] | None = None, trigger: str = "manual",
              start: date | str | None = None, end: date | str | None = None) -> str:
    """Record a run and enqueue one chain per batch on the pipeline's queue; returns the run id."""
    from stockpulse.config import TICKER_PATTERN
    from stockpulse.pipeline.tasks import chain_from
    from stockpulse.providers import PROVIDERS

    pipe = get_settings().pipeline(pipeline)
    if trigger not in TRIGGERS:
        raise ConfigError(f"unknown trigger {trigger!r}")
    if pipe.data_type not in PROVIDERS[pipe.provider].fetchers:
        raise ConfigError(f"pipeline {pipeline!r} is a stream ({pipe.provider} {pipe.data_type}): it has no runs; "
                          "its consumers are started by stockpulse.maintenance.supervise_streams (docs/realtime.md)")
    chosen = tuple(symbols) if symbols else pipe.symbols
    bad = [s for s in chosen if not TICKER_PATTERN.match(s)]
    if bad:
        raise ConfigError(f"invalid symbol {bad[0]!r}")
    if not chosen:
        raise ConfigError(f"pipeline {pipeline!r} has no symbols")
    start_d = date.fromisoformat(start) if isinstance(start, str) else start
    end_d = date.fromisoformat(end) if isinstance(end, str) else end
    if start_d and end_d and start_d > end_d:
        raise ConfigError(f"start {start_d} is after end {end_d}")
    with tracing.run_root(pipe.name, trigger):
        with get_engine().begin() as conn:
            plans = plan_batches(pipe, chosen, start_d, end_d, conn)
            run_id = _create_run(conn, pipe, trigger, plans, {
                "symbols": list(chosen), "start": start_d.isoformat() if start_d else None,
                "end": end_d.isoformat() if end_d else None, "interval": pipe.interval})
        _enqueue(run_id, [chain_from("fetch", None, run_id, p.batch_no, pipe.name) for p in plans])
    return run_id


def record_skipped(pipeline: str, trigger: str, reason: str, *, params: dict[str, Any] | None = None) -> str:
    """A run that a calendar skipped: recorded (status ``skipped``, the reason), never silently dropped."""
    pipe = get_settings().pipeline(pipeline)
    now = utcnow()
    with get_engine().begin() as conn:
        run_id = _create_run(conn, pipe, trigger, [], dict(params or {}, skipped=reason))
        conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(
            status="skipped", error_message=reason, started_at=now, finished_at=now))
    return run_id


def start_gap_fill(pipeline: str, symbols: tuple[str, ...], since: datetime, until: datetime) -> str:
    """A run (trigger ``gap_fill``) fetching exactly [since, until] over the provider's REST API for the
    symbols of a stream shard that was not receiving; its batches carry the window as ISO datetimes."""
    from stockpulse.pipeline.tasks import chain_from

    pipe = get_settings().pipeline(pipeline)
    window = (since.astimezone(UTC).isoformat(), until.astimezone(UTC).isoformat())
    plans = [BatchPlan(n, tuple(symbols[i:i + pipe.batch_size]), since.date(), until.date())
             for n, i in enumerate(range(0, len(symbols), pipe.batch_size))]
    with tracing.run_root(pipe.name, "gap_fill"):
        with get_engine().begin() as conn:
            run_id = _create_run(conn, pipe, "gap_fill", plans, {
                "symbols": list(symbols), "since": window[0], "until": window[1], "interval": pipe.interval},
                window=window)
        _enqueue(run_id, [chain_from("fetch", None, run_id, p.batch_no, pipe.name) for p in plans])
    return run_id


def batch_window(batch: Any) -> tuple[date, date, datetime | None, datetime | None]:
    """A batch's (start, end) days and, for a gap fill, its exact (since, until)."""
    if len(batch.start) > 10:
        since, until = datetime.fromisoformat(batch.start), datetime.fromisoformat(batch.end)
        return since.date(), until.date(), since, until
    return date.fromisoformat(batch.start), date.fromisoformat(batch.end), None, None


def start_replay(entry: Any) -> tuple[str, str]:
    """A new run (trigger ``replay``) for a dead-lettered batch, from its failed stage when that stage's
    stored input is still there, else from fetch. Returns (run id, first stage)."""
    from stockpulse.pipeline import payloads
    from stockpulse.pipeline.tasks import chain_from

    pipe = get_settings().pipeline(entry.pipeline)
    with tracing.run_root(pipe.name, "replay", **{"stockpulse.replay_of": entry.id}):
        with get_engine().begin() as conn:
            original = load_batch(conn, entry.run_id, entry.batch_no)
            start_d, end_d, since, until = batch_window(original)
            plan = BatchPlan(0, tuple(original.symbols), start_d, end_d)
            run_id = _create_run(conn, pipe, "replay", [plan], {
                "symbols": list(plan.symbols), "start": original.start, "end": original.end, "interval": pipe.interval,
                "replay_of": entry.id, "original_run": entry.run_id, "original_batch": entry.batch_no},
                window=(original.start, original.end) if since else None)
        stage, stage_input = "fetch", None
        handles = [entry.stage_input] if entry.stage == "transform" else \
            [(entry.stage_input or {}).get("rows"), (entry.stage_input or {}).get("fetched")]
        if entry.stage != "fetch" and entry.stage_input and all(payloads.exists(h) for h in handles if h is not None):
            stage, stage_input = entry.stage, entry.stage_input
        _enqueue(run_id, [chain_from(stage, stage_input, run_id, 0, pipe.name)])
    return run_id, stage


def _create_run(conn: Connection, pipe: PipelineSettings, trigger: str, plans: list[BatchPlan],
                params: dict[str, Any], window: tuple[str, str] | None = None) -> str:
    run_id = str(uuid.uuid4())
    # Inside the run's root span (tracing.run_root): the run and its trace name each other.
    tracing.annotate(**{"stockpulse.run_id": run_id, "stockpulse.provider": pipe.provider,
                        "stockpulse.data_type": pipe.data_type, "stockpulse.batches": len(plans)})
    ids = tracing.current_ids()
    conn.execute(runs_t.insert().values(
        id=run_id, pipeline=pipe.name, data_type=pipe.data_type, provider=pipe.provider, trigger=trigger,
        status="queued", created_at=utcnow(), batches_total=len(plans), batches_done=0,
        records_fetched=0, records_loaded=0, records_rejected=0, task_ids=[], params=params,
        trace_id=ids[0] if ids else None,
    ))
    if not plans:  # a skipped run has no batches (an empty executemany would insert one empty row)
        return run_id
    conn.execute(batches_t.insert(), [
        {"run_id": run_id, "batch_no": p.batch_no, "symbols": list(p.symbols),
         "start": window[0] if window else p.start.isoformat(), "end": window[1] if window else p.end.isoformat(),
         "status": "queued", "fetched": 0, "valid": 0, "rejected": 0, "loaded": 0,
         "attempts": {}, "task_ids": {}, "updated_at": utcnow()}
        for p in plans
    ])
    return run_id


def _enqueue(run_id: str, chains: list[Any]) -> None:
    task_ids = [c.apply_async().id for c in chains]
    with get_engine().begin() as conn:
        conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(task_ids=task_ids))


def load_batch(conn: Connection, run_id: str, batch_no: int) -> Any:
    row = conn.execute(select(batches_t).where(batches_t.c.run_id == run_id,
                                               batches_t.c.batch_no == batch_no)).one_or_none()
    if row is None:
        from stockpulse.errors import PermanentError

        raise PermanentError(f"run {run_id} has no batch {batch_no}")
    return row


def stage_started(run_id: str, batch_no: int, stage: str, task_id: str | None, attempt: int) -> Any:
    """Mark a stage started; returns the batch row as it was (callers skip work a batch already did).

    The run row is only recomputed when the batch starts for the first time (the run becomes running): a
    per-stage round of run locking would cost more than many a stage.
    """
    with get_engine().begin() as conn:
        batch = load_batch(conn, run_id, batch_no)
        first_start = batch.status == "queued"
        if first_start:
            _lock_run(conn, run_id)
        values: dict[str, Any] = {f"{stage}_started_at": batch._mapping[f"{stage}_started_at"] or utcnow()}
        if batch.status == "queued":
            values["status"] = "running"
        task_ids = dict(batch.task_ids or {})
        task_ids[stage] = task_id
        attempts = dict(batch.attempts or {})
        attempts[stage] = attempt + 1
        values.update(task_ids=task_ids, attempts=attempts, updated_at=utcnow())
        conn.execute(update(batches_t).where(batches_t.c.run_id == run_id, batches_t.c.batch_no == batch_no)
                     .values(**values))
        if first_start:
            _refresh_run(conn, run_id)
        return batch


def stage_finished(conn: Connection, run_id: str, batch_no: int, stage: str, *, refresh_run: bool = True,
                   **values: Any) -> str | None:
    """Within the caller's transaction (the load stage commits rows and status together). ``refresh_run``
    recomputes the run's totals and status; a stage that changes neither can skip it. Returns the run's
    trigger when the run was refreshed."""
    if refresh_run:
        _lock_run(conn, run_id)
    values[f"{stage}_finished_at"] = values["updated_at"] = utcnow()
    conn.execute(update(batches_t).where(batches_t.c.run_id == run_id, batches_t.c.batch_no == batch_no)
                 .values(**values))
    return _refresh_run(conn, run_id) if refresh_run else None


def batch_failed(run_id: str, batch_no: int, stage: str, exc: BaseException) -> None:
    with get_engine().begin() as conn:
        _lock_run(conn, run_id)
        batch = load_batch(conn, run_id, batch_no)
        if batch.status == "loaded":
            return
        conn.execute(update(batches_t).where(batches_t.c.run_id == run_id, batches_t.c.batch_no == batch_no)
                     .values(status="failed", error_type=type(exc).__name__,
                             error_message=f"{stage}: {exc}"[:4000], **{f"{stage}_finished_at": utcnow()}))
        _refresh_run(conn, run_id)


def _lock_run(conn: Connection, run_id: str) -> None:
    # Serialises the batches of one run while they update the run row (SQLite already holds the write lock).
    if conn.dialect.name == "postgresql":
        conn.execute(select(runs_t.c.id).where(runs_t.c.id == run_id).with_for_update())


def _refresh_run(conn: Connection, run_id: str) -> str | None:
    """Recompute the run's totals and status from its batches; returns the run's trigger."""
    rows = conn.execute(select(batches_t).where(batches_t.c.run_id == run_id)).all()
    if not rows:
        return None
    done = [r for r in rows if r.status in ("loaded", "failed")]
    values: dict[str, Any] = {
        "batches_done": len(done),
        "records_fetched": sum(r.fetched for r in rows),
        "records_loaded": sum(r.loaded for r in rows),
        "records_rejected": sum(r.rejected for r in rows),
    }
    for stage in STAGES:
        starts = [r._mapping[f"{stage}_started_at"] for r in rows if r._mapping[f"{stage}_started_at"]]
        ends = [r._mapping[f"{stage}_finished_at"] for r in rows if r._mapping[f"{stage}_finished_at"]]
        values[f"{stage}_started_at"] = min(starts) if starts else None
        values[f"{stage}_finished_at"] = max(ends) if ends and len(done) == len(rows) else None
    failed = [r for r in rows if r.status == "failed"]
    if len(done) == len(rows):
        if failed:
            values["status"] = "failed"
            first = failed[0]
            values["error_type"] = first.error_type
            values["error_message"] = (f"{len(failed)} of {len(rows)} batches failed; batch {first.batch_no}: "
                                       f"{first.error_message}")[:4000]
        elif values["records_rejected"]:
            values["status"] = "partial"
        else:
            values["status"] = "succeeded"
        values["finished_at"] = utcnow()
    elif any(r.status != "queued" for r in rows):
        values["status"] = "running"
    current = conn.execute(select(runs_t.c.started_at, runs_t.c.status, runs_t.c.pipeline, runs_t.c.trigger)
                           .where(runs_t.c.id == run_id)).one()
    if current.status in FINAL and values.get("status") not in FINAL:
        values.pop("status", None)  # a late redelivery must not reopen a finished run
    if current.status not in FINAL and values.get("status") in FINAL:
        from stockpulse.observability import metrics

        metrics.run_finished(current.pipeline, current.trigger, values["status"], values["finished_at"].timestamp())
    if current.started_at is None and values.get("status") in ("running", *FINAL):
        values["started_at"] = utcnow()
    conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(**values))
    return current.trigger


def get_run(run_id: str) -> Any:
    with get_engine().connect() as conn:
        return conn.execute(select(runs_t).where(runs_t.c.id == run_id)).one_or_none()


def sweep_stale(older_than_s: float) -> list[tuple[str, int]]:
    """Batches with no sign of life for ``older_than_s`` (their messages were lost, e.g. Redis restarted
    empty) are marked failed and dead-lettered, so ``stockpulse dlq replay`` re-runs them.
    Returns the (run id, batch) pairs swept."""
    from datetime import timedelta

    from stockpulse.errors import TransientError
    from stockpulse.reliability import dlq

    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with get_engine().connect() as conn:
        stale = conn.execute(
            select(batches_t.c.run_id, batches_t.c.batch_no, runs_t.c.pipeline)
            .join(runs_t, runs_t.c.id == batches_t.c.run_id)
            .where(batches_t.c.status.in_(("queued", "running")), batches_t.c.updated_at < cutoff)
        ).all()
    swept = []
    for row in stale:
        error = TransientError(f"no progress for {older_than_s:.0f}s: its task messages were lost (broker "
                               "restarted empty?); replay it from the dead-letter queue")
        entry = dlq.DeadLetter.from_failure(
            task_name="stockpulse.maintenance.sweep_stale_runs", stage="fetch",
            kwargs={"run_id": row.run_id, "batch_no": row.batch_no, "pipeline": row.pipeline}, stage_input=None,
            error=error, original=error, attempts=0, worker=None)
        dlq.add(entry)
        batch_failed(row.run_id, row.batch_no, "fetch", error)
        swept.append((row.run_id, row.batch_no))
    return swept
