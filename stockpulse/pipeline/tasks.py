"""The three stage tasks every pipeline runs, and the task that starts a run.

Retry, failure recording and idempotency live once, in :class:`StageTask`; the stage bodies only say what
the stage does.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta
from typing import Any

from celery import Task, chain
from celery.exceptions import Retry, SoftTimeLimitExceeded

from stockpulse import quality
from stockpulse.celery_app import app
from stockpulse.config import get_settings
from stockpulse.datatypes import get_data_type
from stockpulse.datatypes.base import Rejected
from stockpulse.db.engine import get_engine
from stockpulse.db.models import watermarks as watermarks_t
from stockpulse.errors import TransientError, classify
from stockpulse.observability import metrics, sentry, tracing
from stockpulse.pipeline import payloads, runs
from stockpulse.pipeline.checkpoints import FetchCheckpoint
from stockpulse.pipeline.loader import latest_per_symbol, raise_watermarks
from stockpulse.pipeline.quarantine import quarantine_records
from stockpulse.providers import Query, get_fetcher
from stockpulse.redis_conn import redis_client
from stockpulse.reliability import dlq
from stockpulse.reliability.breaker import BreakerOpen
from stockpulse.reliability.quotas import QuotaWait
from stockpulse.reliability.retry import backoff_delay, record_failure, stage_policy

log = logging.getLogger("stockpulse.pipeline")


class StageTask(Task):
    """Base of the fetch, transform and load tasks: bookkeeping, classification, retries, dead letters."""

    abstract = True
    stage: str = ""
    acks_late = True
    reject_on_worker_lost = True
    # Retries are bounded by the stage's policy (failures counted in Redis), not by Celery's counter.
    max_retries = None
    # Waiting for a quota slot or an open breaker re-queues the task; bounded so nothing loops forever.
    max_waits = 1000

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run_id, batch_no = kwargs["run_id"], kwargs["batch_no"]
        context = {"run_id": run_id, "batch_no": batch_no, "stage": self.stage}
        pipeline, began = kwargs.get("pipeline", ""), time.monotonic()
        try:
            batch = runs.stage_started(run_id, batch_no, self.stage, self.request.id, self.request.retries or 0)
            if batch.status in ("loaded", "failed"):
                # Redelivered after the batch was settled (the worker died between commit and ack).
                log.info("stage skipped: batch already %s", batch.status, extra=context)
                return {"skipped": batch.status}
            pipe = get_settings().pipelines.get(pipeline)
            tracing.annotate(**{"stockpulse.pipeline": pipeline, "stockpulse.provider": pipe.provider if pipe else None,
                                "stockpulse.data_type": pipe.data_type if pipe else None,
                                "stockpulse.stage": self.stage, "stockpulse.run_id": run_id,
                                "stockpulse.batch_no": batch_no, "stockpulse.attempt": (self.request.retries or 0) + 1})
            trace_ids = tracing.current_ids()
            sentry.tag_scope(pipeline=pipeline, provider=pipe.provider if pipe else None,
                             data_type=pipe.data_type if pipe else None, run_id=run_id, batch_no=batch_no,
                             stage=self.stage, trace_id=trace_ids[0] if trace_ids else None)
            log.info("%s started", self.stage,
                     extra={**context, "provider": pipe.provider if pipe else None,
                            "data_type": pipe.data_type if pipe else None, "symbols": len(batch.symbols or ())})
            token = _current_batch.set(batch)
            began_token = _stage_began.set(began)
            try:
                result = super().__call__(*args, **kwargs)
            finally:
                _current_batch.reset(token)
                _stage_began.reset(began_token)
            metrics.stage_done(pipeline, self.stage, "success", time.monotonic() - began)
            return result
        except Retry:
            raise
        except Exception as exc:
            provider = _provider_of(kwargs.get("pipeline"))
            policy = stage_policy(self.stage, provider)
            if isinstance(exc, SoftTimeLimitExceeded):
                exc = TransientError(f"{self.stage} exceeded its soft time limit of {policy.soft_time_limit_s}s")
            error = classify(exc)
            if isinstance(error, (QuotaWait, BreakerOpen)) and (self.request.retries or 0) < self.max_waits:
                delay = min(error.retry_after or 1.0, policy.backoff_cap_s)
                log.info("%s: waiting %.1fs: %s", self.stage, delay, error,
                         extra={**context, "provider": provider, "delay_s": round(delay, 3),
                                "wait": type(error).__name__})
                metrics.wait(provider, "quota" if isinstance(error, QuotaWait) else "breaker")
                tracing.event("quota.wait" if isinstance(error, QuotaWait) else "breaker.wait", provider=provider,
                              delay_s=round(delay, 3))
                raise self.retry(countdown=delay, exc=error, max_retries=None) from None
            failures = 0
            if isinstance(error, TransientError):
                try:
                    failures = record_failure(run_id, batch_no, self.stage)
                except Exception:  # Redis is down too: fall back to Celery's own counter
                    failures = (self.request.retries or 0) + 1
                if failures <= policy.max_retries:
                    delay = backoff_delay(failures, policy, error.retry_after)
                    if delay is not None:
                        log.warning("retrying %s in %.1fs (attempt %d of %d): %s: %s", self.stage, delay,
                                    failures + 1, policy.max_retries + 1, type(error).__name__, error,
                                    extra={**context, "provider": provider, "attempt": failures + 1,
                                           "delay_s": round(delay, 3), "error_type": type(error).__name__})
                        metrics.retry(pipeline, self.stage, type(error).__name__)
                        tracing.event("retry", attempt=failures + 1, delay_s=round(delay, 3),
                                      error_type=type(error).__name__)
                        metrics.stage_done(pipeline, self.stage, "retry", time.monotonic() - began)
                        raise self.retry(countdown=delay, exc=error, max_retries=None) from None
            log.error("%s failed for good: %s: %s", self.stage, type(error).__name__, error,
                      extra={**context, "provider": provider, "error_type": type(error).__name__,
                             sentry.ALREADY_REPORTED: True})
            self._dead_letter(error, exc, kwargs, args, failures)
            metrics.dead_letter(pipeline, self.stage, type(error).__name__)
            metrics.stage_done(pipeline, self.stage, "failure", time.monotonic() - began)
            try:
                runs.batch_failed(run_id, batch_no, self.stage, error)
            except Exception:  # the database itself may be what failed; the DLQ entry says so anyway
                log.exception("could not record the failure of run %s", run_id, extra=context)
            raise error from None

    def _dead_letter(self, error: BaseException, original: BaseException, kwargs: dict[str, Any],
                     args: tuple[Any, ...], failures: int) -> None:
        try:
            dlq.add(dlq.DeadLetter.from_failure(
                task_name=self.name, stage=self.stage, kwargs=kwargs, stage_input=args[0] if args else None,
                error=error, original=original, attempts=max(failures, 1), worker=self.request.hostname))
        except Exception:
            log.exception("could not write the dead letter for run %s", kwargs.get("run_id"))


def _provider_of(pipeline: str | None) -> str | None:
    pipelines = get_settings().pipelines
    return pipelines[pipeline].provider if pipeline in pipelines else None


def _policy(stage: str) -> dict[str, Any]:
    policy = get_settings().stages[stage]
    return {"soft_time_limit": policy.soft_time_limit_s, "time_limit": policy.time_limit_s}


# The batch row StageTask read when the stage started, so the stage body need not read it again.
_current_batch: ContextVar[Any] = ContextVar("stockpulse_current_batch", default=None)
_stage_began: ContextVar[float] = ContextVar("stockpulse_stage_began", default=0.0)


def _finished(pipe: Any, **fields: Any) -> dict[str, Any]:
    """The fields of a stage's end event: its counts, the pipeline's provider and data type, duration_ms."""
    began = _stage_began.get()
    tracing.annotate(**{f"stockpulse.{name}": value for name, value in fields.items()})
    return {"provider": pipe.provider, "data_type": pipe.data_type,
            "duration_ms": round((time.monotonic() - began) * 1000) if began else None, **fields}


def _context(run_id: str, batch_no: int, pipeline: str) -> tuple[Any, Any, Query]:
    pipe = get_settings().pipeline(pipeline)
    batch = _current_batch.get()
    if batch is None or batch.run_id != run_id or batch.batch_no != batch_no:
        with get_engine().connect() as conn:
            batch = runs.load_batch(conn, run_id, batch_no)
    start, end, since, until = runs.batch_window(batch)
    query = Query(symbols=tuple(batch.symbols), interval=pipe.interval, start=start, end=end,
                  options=dict(pipe.options), since=since, until=until)
    return pipe, batch, query


@app.task(bind=True, base=StageTask, name="stockpulse.pipeline.fetch", stage="fetch", **_policy("fetch"))
def fetch(self: StageTask, *, run_id: str, batch_no: int, pipeline: str) -> dict[str, Any]:
    pipe, _batch, query = _context(run_id, batch_no, pipeline)
    checkpoint = FetchCheckpoint(run_id, batch_no)
    fetcher = get_fetcher(pipe.provider, pipe.data_type, checkpoint=checkpoint)
    pages = fetcher.extract(query)
    handle = payloads.put(pages, run_id=run_id, label=f"b{batch_no}-fetch")
    with get_engine().begin() as conn:
        runs.stage_finished(conn, run_id, batch_no, "fetch", refresh_run=False)
    checkpoint.clear()
    client = fetcher.client
    log.info("fetched %d pages (%d bytes) in %d requests, %d resumed from a checkpoint", len(pages),
             handle["bytes"], client.requests_made if client else 0, client.requests_resumed if client else 0,
             extra=_finished(pipe, pages=len(pages), bytes=handle["bytes"]))
    return handle


@app.task(bind=True, base=StageTask, name="stockpulse.pipeline.transform", stage="transform",
             **_policy("transform"))
def transform(self: StageTask, fetched: dict[str, Any], *, run_id: str, batch_no: int,
              pipeline: str) -> dict[str, Any]:
    pipe, _batch, query = _context(run_id, batch_no, pipeline)
    fetcher = get_fetcher(pipe.provider, pipe.data_type, with_client=False)
    data_type = get_data_type(pipe.data_type)
    records = list(fetcher.transform(payloads.get(fetched), query))
    result = data_type.validate(records)
    if data_type.every_symbol_has_data:
        result.rejected.extend(missing_symbols(query, records, first_record_no=len(records)))
    checked = quality.check_batch(data_type, result.valid, pipe, first_record_no=len(records) + len(query.symbols),
                                  requested=query.window())
    result.valid, findings = checked.valid, checked.findings
    result.rejected.extend(checked.rejected)
    rows = data_type.rows(result.valid)
    handle = payloads.put(rows, run_id=run_id, label=f"b{batch_no}-rows")
    with get_engine().begin() as conn:
        quality.store_findings(conn, findings, pipeline=pipe.name, data_type=pipe.data_type, provider=pipe.provider,
                               run_id=run_id, batch_no=batch_no)
        quarantine_records(conn, result.rejected, pipeline=pipe.name, run_id=run_id, batch_no=batch_no,
                           data_type=pipe.data_type, provider=pipe.provider)
        runs.stage_finished(conn, run_id, batch_no, "transform", fetched=len(records), valid=len(result.valid),
                            rejected=len(result.rejected))
    metrics.records(pipeline, "transform", fetched=len(records), valid=len(result.valid),
                    rejected=len(result.rejected))
    metrics.quality_findings(pipeline, [(f.check, f.severity) for f in findings])
    log.info("validated %d records: %d valid, %d quarantined", len(records), len(result.valid),
             len(result.rejected), extra=_finished(pipe, records_fetched=len(records),
                                                   records_valid=len(result.valid),
                                                   records_rejected=len(result.rejected)))
    return {"rows": handle, "fetched": fetched}


@app.task(bind=True, base=StageTask, name="stockpulse.pipeline.load", stage="load", **_policy("load"))
def load(self: StageTask, transformed: dict[str, Any], *, run_id: str, batch_no: int,
         pipeline: str) -> dict[str, Any]:
    pipe = get_settings().pipeline(pipeline)
    data_type = get_data_type(pipe.data_type)
    rows = [data_type.from_row(r) if data_type.from_row else tuple(r) for r in payloads.get(transformed["rows"])]
    latest = (data_type.watermark_points(rows) if data_type.watermark_points
              else latest_per_symbol(rows, data_type.columns))
    with get_engine().begin() as conn:
        changed = data_type.load_rows(conn, pipe, rows)
        raise_watermarks(conn, watermarks_t, pipe.name, latest)
        trigger = runs.stage_finished(conn, run_id, batch_no, "load", loaded=len(rows), status="loaded")
    metrics.records(pipeline, "load", loaded=len(rows))
    if latest and trigger in ("schedule", "manual"):  # backfills and replays load old data on purpose
        newest = data_type.event_time(max(latest.values()), pipe.interval)
        metrics.ingestion_latency(pipeline, (datetime.now(UTC) - newest).total_seconds())
    # Only after the commit: a redelivered load finds the batch settled and never needs the payload.
    payloads.delete(transformed["rows"], transformed.get("fetched"))
    log.info("loaded %d rows (%d new or changed)", len(rows), changed,
             extra=_finished(pipe, records_loaded=len(rows), records_changed=changed))
    return {"loaded": len(rows), "changed": changed}


def missing_symbols(query: Query, records: list[Any], *, first_record_no: int) -> list[Rejected]:
    """Requested symbols the provider sent nothing for, over a range with past trading days: an unknown or
    delisted symbol must not pass unnoticed. They are quarantined with the reason (record = the request)."""
    today = today_utc()
    has_past_weekday = any((query.start + timedelta(days=i)).weekday() < 5 and query.start + timedelta(days=i) < today
                           for i in range(min((query.end - query.start).days + 1, 7)))
    if not has_past_weekday:
        return []
    seen = {r.get("symbol") for r in records if isinstance(r, dict)}
    return [Rejected(first_record_no + i, {"symbol": s, "start": query.start.isoformat(), "end": query.end.isoformat()},
                     f"provider returned no data for {s} between {query.start} and {query.end} "
                     "(unknown or delisted symbol?)")
            for i, s in enumerate(sorted(set(query.symbols) - seen))]


def chain_from(stage: str, stage_input: Any, run_id: str, batch_no: int, pipeline: str) -> Any:
    """The chain of one batch, from ``stage`` on (``stage_input`` is that stage's input, None for fetch)."""
    kwargs = {"run_id": run_id, "batch_no": batch_no, "pipeline": pipeline}
    if stage == "fetch":
        return chain(fetch.s(**kwargs), transform.s(**kwargs), load.s(**kwargs))
    if stage == "transform":
        return chain(transform.s(stage_input, **kwargs), load.s(**kwargs))
    if stage == "load":
        return load.s(stage_input, **kwargs)
    raise ValueError(f"unknown stage {stage!r}")


@app.task(name="stockpulse.pipeline.run")
def run(pipeline: str, symbols: list[str] | None = None, trigger: str = "manual", start: str | None = None,
        end: str | None = None, calendar_rule: dict[str, Any] | None = None, schedule_name: str | None = None,
        as_of: str | None = None) -> str | None:
    """Start a run: ``celery -A stockpulse call stockpulse.pipeline.run --kwargs '{"pipeline": "daily_bars"}'``.

    A schedule bound to an exchange calendar passes its ``calendar_rule``: the run starts only when the
    calendar allows it at ``as_of`` (default now); a skip is recorded as a run with status ``skipped`` and
    the reason. An after-close schedule runs once per session (claimed in Redis)."""
    if calendar_rule:
        from stockpulse.calendars import CalendarRule, gate

        moment = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
        decision = gate(CalendarRule(**calendar_rule), moment)
        context = {"pipeline": pipeline, "schedule": schedule_name, "reason": decision.reason}
        if not decision.run:
            if not decision.record_skip:
                return None
            log.info("schedule %s skipped: %s", schedule_name, decision.reason, extra=context)
            return runs.record_skipped(pipeline, trigger, decision.reason, params={"schedule": schedule_name})
        if decision.session and not redis_client().set(
                f"stockpulse:schedule:after_close:{schedule_name}:{pipeline}:{decision.session}", 1, nx=True,
                ex=3 * 86400):
            return None  # this session's after-close run was already started
        log.info("schedule %s: %s", schedule_name, decision.reason, extra=context)
    return runs.start_run(pipeline, symbols=symbols, trigger=trigger, start=start, end=end)


def today_utc() -> date:
    return datetime.now(UTC).date()
