"""The three stage tasks every pipeline runs, and the task that starts a run.

Retry, failure recording and idempotency live once, in :class:`StageTask`; the stage bodies only say what
the stage does.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, date, datetime
from typing import Any

from celery import Task, chain
from celery.exceptions import Retry, SoftTimeLimitExceeded

from stockpulse.celery_app import app
from stockpulse.config import StagePolicy, get_settings
from stockpulse.datatypes import get_data_type
from stockpulse.db.engine import get_engine
from stockpulse.db.models import watermarks as watermarks_t
from stockpulse.errors import PermanentError, TransientError, classify
from stockpulse.pipeline import payloads, runs
from stockpulse.pipeline.loader import raise_watermarks, upsert
from stockpulse.pipeline.quarantine import quarantine_records
from stockpulse.providers import Query, get_fetcher

log = logging.getLogger("stockpulse.pipeline")


def backoff_delay(attempt: int, policy: StagePolicy, retry_after: float | None = None) -> float | None:
    """Exponential backoff with full jitter, never shorter than the provider's Retry-After.

    None when the provider asks for a longer wait than the policy allows: the stage fails now instead of
    holding a message past the broker's visibility timeout.
    """
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * (2 ** attempt))
    delay = random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0
    if retry_after is not None:
        if retry_after > policy.backoff_cap_s:
            return None
        delay = max(delay, retry_after)
    return delay


class StageTask(Task):
    """Base of the fetch, transform and load tasks: bookkeeping, classification, retries."""

    abstract = True
    stage: str = ""
    acks_late = True
    reject_on_worker_lost = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run_id, batch_no = kwargs["run_id"], kwargs["batch_no"]
        policy = get_settings().stages[self.stage]
        attempt = self.request.retries or 0
        try:
            batch = runs.stage_started(run_id, batch_no, self.stage, self.request.id, attempt)
            if batch.status in ("loaded", "failed"):
                # Redelivered after the batch was settled (the worker died between commit and ack).
                log.info("stage skipped: batch already %s", batch.status,
                         extra={"run_id": run_id, "batch_no": batch_no, "stage": self.stage})
                return {"skipped": batch.status}
            return super().__call__(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            if isinstance(exc, SoftTimeLimitExceeded):
                exc = TransientError(f"{self.stage} exceeded its soft time limit of {policy.soft_time_limit_s}s")
            error = classify(exc)
            if isinstance(error, TransientError) and attempt < policy.max_retries:
                delay = backoff_delay(attempt, policy, error.retry_after)
                if delay is not None:
                    log.warning("retrying %s in %.1fs (attempt %d of %d): %s", self.stage, delay, attempt + 1,
                                policy.max_retries, error,
                                extra={"run_id": run_id, "batch_no": batch_no, "stage": self.stage,
                                       "attempt": attempt + 1, "delay_s": round(delay, 3)})
                    raise self.retry(countdown=delay, exc=error, max_retries=policy.max_retries) from None
            log.error("%s failed for good: %s: %s", self.stage, type(error).__name__, error,
                      extra={"run_id": run_id, "batch_no": batch_no, "stage": self.stage})
            try:
                runs.batch_failed(run_id, batch_no, self.stage, error)
            except Exception:  # the database itself may be what failed; the message says so anyway
                log.exception("could not record the failure of run %s", run_id)
            raise error from None


def _policy(stage: str) -> dict[str, Any]:
    policy = get_settings().stages[stage]
    return {"soft_time_limit": policy.soft_time_limit_s, "time_limit": policy.time_limit_s}


def _context(run_id: str, batch_no: int) -> tuple[Any, Any, Any, Query]:
    run = runs.get_run(run_id)
    if run is None:
        raise PermanentError(f"unknown run {run_id}")
    pipe = get_settings().pipeline(run.pipeline)
    with get_engine().connect() as conn:
        batch = runs.load_batch(conn, run_id, batch_no)
    query = Query(symbols=tuple(batch.symbols), interval=pipe.interval, start=date.fromisoformat(batch.start),
                  end=date.fromisoformat(batch.end), options=dict(pipe.options))
    return run, pipe, batch, query


@app.task(bind=True, base=StageTask, name="stockpulse.pipeline.fetch", stage="fetch", **_policy("fetch"))
def fetch(self: StageTask, *, run_id: str, batch_no: int, pipeline: str) -> dict[str, Any]:
    run, pipe, _batch, query = _context(run_id, batch_no)
    fetcher = get_fetcher(pipe.provider, pipe.data_type)
    pages = fetcher.extract(query)
    handle = payloads.put(pages, run_id=run_id, label=f"b{batch_no}-fetch")
    with get_engine().begin() as conn:
        runs.stage_finished(conn, run_id, batch_no, "fetch")
    log.info("fetched %d pages (%d bytes) in %d requests", len(pages), handle["bytes"],
             fetcher.client.requests_made if fetcher.client else 0,
             extra={"run_id": run_id, "batch_no": batch_no, "stage": "fetch", "provider": pipe.provider})
    return handle


@app.task(bind=True, base=StageTask, name="stockpulse.pipeline.transform", stage="transform",
             **_policy("transform"))
def transform(self: StageTask, fetched: dict[str, Any], *, run_id: str, batch_no: int,
              pipeline: str) -> dict[str, Any]:
    run, pipe, _batch, query = _context(run_id, batch_no)
    fetcher = get_fetcher(pipe.provider, pipe.data_type, with_client=False)
    data_type = get_data_type(pipe.data_type)
    records = list(fetcher.transform(payloads.get(fetched), query))
    result = data_type.validate(records)
    rows = data_type.rows(result.valid)
    handle = payloads.put(rows, run_id=run_id, label=f"b{batch_no}-rows")
    with get_engine().begin() as conn:
        quarantine_records(conn, result.rejected, pipeline=pipe.name, run_id=run_id, batch_no=batch_no,
                           data_type=pipe.data_type, provider=pipe.provider)
        runs.stage_finished(conn, run_id, batch_no, "transform", fetched=len(records), valid=len(result.valid),
                            rejected=len(result.rejected))
    log.info("validated %d records: %d valid, %d quarantined", len(records), len(result.valid),
             len(result.rejected), extra={"run_id": run_id, "batch_no": batch_no, "stage": "transform"})
    return {"rows": handle, "fetched": fetched}


@app.task(bind=True, base=StageTask, name="stockpulse.pipeline.load", stage="load", **_policy("load"))
def load(self: StageTask, transformed: dict[str, Any], *, run_id: str, batch_no: int,
         pipeline: str) -> dict[str, Any]:
    run, pipe, _batch, _query = _context(run_id, batch_no)
    data_type = get_data_type(pipe.data_type)
    rows = [data_type.from_row(r) if data_type.from_row else tuple(r) for r in payloads.get(transformed["rows"])]
    latest: dict[str, datetime] = {}
    ts_at, sym_at = data_type.columns.index("ts"), data_type.columns.index("symbol")
    for row in rows:
        if row[sym_at] not in latest or row[ts_at] > latest[row[sym_at]]:
            latest[row[sym_at]] = row[ts_at]
    with get_engine().begin() as conn:
        changed = upsert(conn, data_type.table, data_type.columns, data_type.key, rows)
        raise_watermarks(conn, watermarks_t, pipe.name, latest)
        runs.stage_finished(conn, run_id, batch_no, "load", loaded=len(rows), status="loaded")
    # Only after the commit: a redelivered load finds the batch settled and never needs the payload.
    payloads.delete(transformed["rows"], transformed.get("fetched"))
    log.info("loaded %d rows (%d new or changed)", len(rows), changed,
             extra={"run_id": run_id, "batch_no": batch_no, "stage": "load"})
    return {"loaded": len(rows), "changed": changed}


def chain_for_batch(run_id: str, batch_no: int, pipeline: str) -> Any:
    kwargs = {"run_id": run_id, "batch_no": batch_no, "pipeline": pipeline}
    return chain(fetch.s(**kwargs), transform.s(**kwargs), load.s(**kwargs))


@app.task(name="stockpulse.pipeline.run")
def run(pipeline: str, symbols: list[str] | None = None, trigger: str = "manual", start: str | None = None,
        end: str | None = None) -> str:
    """Start a run: ``celery -A stockpulse call stockpulse.pipeline.run --kwargs '{"pipeline": "daily_bars"}'``."""
    return runs.start_run(pipeline, symbols=symbols, trigger=trigger, start=start, end=end)


def today_utc() -> date:
    return datetime.now(UTC).date()
