"""One stream shard's consumer: connect, subscribe, read frames, micro-batch, load, reconnect.

Ticks are handed every ``flush_ms`` or ``flush_max`` ticks, whichever comes first, to the shard's backlog
(``stockpulse.streams.backlog``), whose loader thread validates them (the schemas are the contract; bad ones
are quarantined with a reason) and commits them in one transaction that also checks the shard's fencing
token. A disconnect or a silence longer than ``silence_s`` closes the connection and reconnects with
exponential backoff and jitter; the window without data is recorded in ``stream_gaps`` and, where the
provider has a REST source for the data type, filled by a ``gap_fill`` pipeline run. A shard taken over
from a consumer that died records the window since that consumer's last commit the same way. An error the
provider states as permanent (a refused key) ends the consumer instead of reconnecting in a storm. The
pipeline's symbol list is re-read every ``config_check_s``: changes are subscribed/unsubscribed on the
live connection.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from math import ceil
from typing import Any

import websocket
from sqlalchemy import select

from stockpulse import quality
from stockpulse.calendars import in_session, traded_between
from stockpulse.config import PipelineSettings, get_settings, load_settings
from stockpulse.datatypes import get_data_type
from stockpulse.datatypes.base import Rejected
from stockpulse.db.engine import get_engine
from stockpulse.db.models import stream_fences, stream_gaps, watermarks
from stockpulse.errors import ConfigError, PermanentError, TransientError, classify
from stockpulse.observability import metrics, sentry, tracing
from stockpulse.pipeline.loader import latest_per_symbol, raise_watermarks, upsert
from stockpulse.pipeline.quarantine import quarantine_records
from stockpulse.providers import PROVIDERS
from stockpulse.redis_conn import redis_client
from stockpulse.streams.backlog import Backlog, Batch
from stockpulse.streams.lease import Lease, LeaseLost, fence

log = logging.getLogger("stockpulse.streams")


@dataclass(frozen=True)
class StreamOptions:
    shard_size: int = 50
    flush_ms: float = 100.0
    flush_max: int = 1000
    silence_s: float = 30.0
    ping_s: float = 20.0  # websocket ping frames keep idle connections open through proxies and NATs
    lease_ttl_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    max_session_s: float = 3600.0  # then the supervisor starts a fresh consumer
    max_backlog: int = 100_000  # ticks waiting in memory for their commit; more are spilled to Redis
    config_check_s: float = 10.0  # how often the symbol list is re-read from config
    gap_margin_s: float = 2.0  # a gap fill asks for this much more on both sides (loads are idempotent)
    gap_fill_max_s: float = 6 * 3600.0  # longer gaps are reported, not filled (run a backfill instead)

    @classmethod
    def of(cls, pipe: PipelineSettings) -> StreamOptions:
        known = {k: pipe.options[k] for k in cls.__dataclass_fields__ if k in pipe.options}
        return cls(**{k: type(getattr(cls, k))(v) for k, v in known.items()})


def shards(pipe: PipelineSettings) -> list[tuple[str, ...]]:
    size = StreamOptions.of(pipe).shard_size
    return [pipe.symbols[i * size:(i + 1) * size] for i in range(ceil(len(pipe.symbols) / size))]


def shard_name(pipeline: str, shard_no: int) -> str:
    return f"{pipeline}:{shard_no}"


def starting_key(shard: str) -> str:
    """Set by the supervisor when it sends a consumer for ``shard``, until that consumer holds the lease."""
    return f"stockpulse:stream:starting:{shard}"


@dataclass
class Session:
    """What one consumer did, for its task result and logs."""

    loaded: int = 0
    rejected: int = 0
    flushes: int = 0
    connects: int = 0
    gaps: list[tuple[str, str, str]] = field(default_factory=list)
    extra_loaded: dict[str, int] = field(default_factory=dict)  # other data types on the connection (bars)
    ended: str = ""


class StreamConsumer:
    def __init__(self, pipeline: str, shard_no: int, *, stop: threading.Event | None = None):
        settings = get_settings()
        self.pipe = settings.pipeline(pipeline)
        self.options = StreamOptions.of(self.pipe)
        self.shard_no = shard_no
        self.symbols = shards(self.pipe)[shard_no]
        self.shard = shard_name(pipeline, shard_no)
        self.stream = PROVIDERS[self.pipe.provider].streams[self.pipe.data_type](settings.provider(self.pipe.provider))
        self.data_type = get_data_type(self.pipe.data_type)
        self.stop = stop or threading.Event()
        self.lease = Lease(redis_client(), self.shard, self.options.lease_ttl_s)
        self.session_id = str(uuid.uuid4())
        self.batch = Batch()
        self.buffered = 0
        self.backlog = Backlog(self.shard, pipeline, redis_client(), self._load, max_ticks=self.options.max_backlog)
        self.record_no = 0
        self.quality_state: dict[str, dict[str, Any]] = {}  # per data type: recent trades for the price band
        self.last_data_at: datetime | None = None
        calendar_name = str(self.pipe.options.get("calendar", self.stream.calendar or "none"))
        self.calendar = None if calendar_name.lower() in ("", "none") else calendar_name
        self.retired = False  # config no longer has this shard (``stop`` is the worker's, shared by consumers)
        self.result = Session()
        self.state: str | None = None
        # run_id: the session, as in its quarantine rows and findings and its commits' traces.
        self.context = {"pipeline": pipeline, "shard": self.shard, "provider": self.pipe.provider,
                        "data_type": self.pipe.data_type, "run_id": self.session_id}

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> Session:
        sentry.tag_scope(**self.context)
        acquired = self.lease.acquire()
        redis_client().delete(starting_key(self.shard))
        if not acquired:
            self.result.ended = "lease held by another consumer"
            return self.result
        log.info("stream %s: lease acquired (token %s), %d symbols", self.shard, self.lease.token,
                 len(self.symbols), extra={**self.context, "token": self.lease.token})
        self._set_state("connecting")
        self.backlog.start()
        try:
            self._consume()
        except LeaseLost as exc:
            self.result.ended = str(exc)
            log.warning("stream %s: %s", self.shard, exc, extra=self.context)
        finally:
            self._hand_off()
            self.backlog.close()
            self.lease.release()
            self._set_state(None)
            log.info("stream %s: stopped (%s): %d ticks loaded, %d quarantined, %d connections", self.shard,
                     self.result.ended or "stop requested", self.result.loaded, self.result.rejected,
                     self.result.connects, extra={**self.context, "records_loaded": self.result.loaded})
        return self.result

    def _consume(self) -> None:
        began, attempt = time.monotonic(), 0
        # A shard written before was not being read since its last commit: a gap like any other.
        disconnected_at: datetime | None = self._last_commit()
        reason = "consumer takeover" if disconnected_at else ""
        while not self.stopping:
            if time.monotonic() - began > self.options.max_session_s:
                self.result.ended = "session length reached"
                return
            try:
                ws = websocket.create_connection(self.stream.url(), timeout=10)
            except Exception as exc:
                error = classify(exc)
                if isinstance(error, PermanentError):
                    self.result.ended = f"{type(error).__name__}: {error}"
                    raise error from None
                attempt += 1
                delay = min(self.options.backoff_cap_s, self.options.backoff_base_s * 2 ** attempt)
                delay = random.uniform(delay / 2, delay)
                log.warning("stream %s: connect failed (%s), retrying in %.1fs (attempt %d)", self.shard, error,
                            delay, attempt, extra={**self.context, "attempt": attempt, "delay_s": round(delay, 3)})
                disconnected_at = disconnected_at or self.last_data_at or datetime.now(UTC)
                reason = reason or f"connect failed: {error}"
                self._set_state("reconnecting")
                self._wait(delay)
                continue
            self.result.connects += 1
            self._set_state("connected")
            if disconnected_at is not None:
                self._record_gap(disconnected_at, datetime.now(UTC), reason)
                if reason != "consumer takeover":
                    metrics.stream_reconnect(self.pipe.name, reason.split(":")[0])
                disconnected_at, reason = None, ""
            attempt = 0
            try:
                for message in [*self.stream.handshake(), *self.stream.subscribe(self.symbols)]:
                    ws.send(message)
                self._read(ws)
            except (websocket.WebSocketException, OSError, TransientError) as exc:
                # Ticks stopped at the last frame, not when the loss was noticed (a silence is noticed late).
                disconnected_at = self.last_data_at or datetime.now(UTC)
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("stream %s: connection lost (%s); reconnecting", self.shard, reason, extra=self.context)
                self._set_state("reconnecting")
            finally:
                try:
                    ws.close(timeout=1)
                except Exception:
                    pass
            self._hand_off()

    def _read(self, ws: Any) -> None:
        flush_every = self.options.flush_ms / 1000
        renew_every = self.options.lease_ttl_s / 3
        now = time.monotonic()
        next_flush, next_renew, last_frame = now + flush_every, now + renew_every, now
        next_config = now + self.options.config_check_s
        next_ping = now + self.options.ping_s
        while not self.stopping:
            if self.backlog.lost is not None:
                raise self.backlog.lost
            ws.settimeout(max(0.001, min(next_flush, next_renew, last_frame + self.options.silence_s) - now))
            try:
                text = ws.recv()
            except websocket.WebSocketTimeoutException:
                text = None
            now = time.monotonic()
            if text:
                last_frame = now
                self.last_data_at = datetime.now(UTC)
                self._take(text)
            elif text is not None and text == "":
                raise websocket.WebSocketConnectionClosedException("connection closed by the provider")
            if now - last_frame > self.options.silence_s:
                if self.silence_is_death(datetime.now(UTC)):
                    raise TransientError(f"silent for {self.options.silence_s:.0f}s")
                last_frame = now  # the market is closed: silence is expected; count it from the next session
            if now >= next_flush or self.buffered >= self.options.flush_max:
                self._hand_off()
                next_flush = now + flush_every
            if now >= next_renew:
                if not self.lease.renew():
                    raise LeaseLost(f"stream shard {self.shard}: lease expired or taken over")
                next_renew = now + renew_every
            if now >= next_config:
                self._follow_config(ws)
                next_config = now + self.options.config_check_s
            if now >= next_ping:
                ws.ping()
                next_ping = now + self.options.ping_s

    def _follow_config(self, ws: Any) -> None:
        """Subscribe/unsubscribe on the live connection when the pipeline's symbols changed in config."""
        try:
            pipe = load_settings().pipelines.get(self.pipe.name)
        except ConfigError as exc:
            log.warning("stream %s: config unreadable, keeping the current symbols: %s", self.shard, exc,
                        extra=self.context)
            return
        if pipe is None or not pipe.enabled:
            self.result.ended = "pipeline disabled or removed from config"
            self.retired = True
            return
        my_shards = shards(pipe)
        wanted = my_shards[self.shard_no] if self.shard_no < len(my_shards) else ()
        if wanted == self.symbols:
            return
        added = tuple(s for s in wanted if s not in self.symbols)
        removed = tuple(s for s in self.symbols if s not in wanted)
        for message in [*self.stream.unsubscribe(removed), *self.stream.subscribe(added)]:
            ws.send(message)
        self.symbols = wanted
        log.info("stream %s: symbols changed in config: +%s -%s", self.shard, ",".join(added) or "none",
                 ",".join(removed) or "none", extra={**self.context, "added": list(added), "removed": list(removed)})
        if not wanted:
            self.result.ended = "shard has no symbols left in config"
            self.retired = True

    def _take(self, text: str | bytes) -> None:
        frame = self.stream.parse(text if isinstance(text, str) else text.decode("utf-8", "replace"))
        if frame.malformed:
            self.batch.rejected.append((self._next_no(), {"frame": str(text)[:2000]}, frame.malformed))
            self.buffered += 1
        for data_type, records in ((self.pipe.data_type, frame.records), *frame.extra.items()):
            if records:
                self.batch.records.setdefault(data_type, []).extend((self._next_no(), r) for r in records)
                self.buffered += len(records)
        if frame.error is not None:
            if isinstance(frame.error, PermanentError):
                self.result.ended = f"{type(frame.error).__name__}: {frame.error}"
            raise frame.error

    def silence_is_death(self, at: datetime) -> bool:
        """A silent stream is dead unless its market is closed at ``at``."""
        return self.calendar is None or in_session(self.calendar, at)

    @property
    def stopping(self) -> bool:
        return self.retired or self.stop.is_set()

    def _set_state(self, state: str | None) -> None:
        metrics.stream_state(self.pipe.name, self.state, state)
        self.state = state

    def _next_no(self) -> int:
        self.record_no += 1
        return self.record_no

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            if not self.lease.renew():
                raise LeaseLost(f"stream shard {self.shard}: lease expired while reconnecting")
            self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic()), self.options.lease_ttl_s / 3))

    # ----------------------------------------------------------------------------------------- load

    def _hand_off(self) -> None:
        if self.buffered:
            self.backlog.put(self.batch)
            self.batch, self.buffered = Batch(), 0

    def _load(self, batch: Batch) -> None:
        """Validate and commit one batch (the backlog's loader thread), fenced by the lease's token; traced as
        a ``stream.commit`` of its own when tracing is on (``tracing.stream_sample_ratio``)."""
        loaded, rejected = self.result.loaded, self.result.rejected
        with tracing.run_root(self.pipe.name, tracing.STREAM_TRIGGER, name="stream.commit",
                              **{"stockpulse.shard": self.shard, "stockpulse.session_id": self.session_id,
                                 "stockpulse.provider": self.pipe.provider, "stockpulse.data_type": self.pipe.data_type,
                                 "stockpulse.ticks": len(batch)}):
            self._commit(batch)
            tracing.annotate(**{"stockpulse.batch_no": self.result.flushes,
                                "stockpulse.records_loaded": self.result.loaded - loaded,
                                "stockpulse.records_rejected": self.result.rejected - rejected})

    def _commit(self, batch: Batch) -> None:
        self.result.flushes += 1
        rejected_all = [Rejected(no, record, reason) for no, record, reason in batch.rejected]
        loads = []
        findings: dict[str, list[quality.Finding]] = {}
        for name, numbered in batch.records.items():
            data_type = get_data_type(name)
            result = data_type.validate(record for _, record in numbered)
            # validate() numbers records by position in this batch; quarantine rows need session-wide numbers.
            rejected = [Rejected(numbered[r.record_no][0], r.record, r.reason) for r in result.rejected]
            # Streams carry no merged data types, so the valid records are the unrejected ones in order.
            refused = {r.record_no for r in result.rejected}
            valid_nos = [no for i, (no, _) in enumerate(numbered) if i not in refused]
            checked = quality.check_batch(data_type, result.valid, self.pipe, first_record_no=0,
                                          state=self.quality_state.setdefault(name, {}))
            rejected += [Rejected(valid_nos[r.record_no], r.record, r.reason) for r in checked.rejected]
            findings[name] = checked.findings
            rows = [data_type.from_row(r) for r in data_type.rows(checked.valid)]
            loads.append((name, data_type, rows, rejected if name != self.pipe.data_type else rejected_all + rejected,
                          len(numbered)))
        if self.pipe.data_type not in batch.records and rejected_all:
            loads.append((self.pipe.data_type, get_data_type(self.pipe.data_type), [], rejected_all, 0))
        with tracing.span("db.load", **{"db.collection.name": "+".join(name for name, *_ in loads),
                                        "stockpulse.rows": sum(len(rows) for _, _, rows, _, _ in loads)}), \
                get_engine().begin() as conn:
            fence(conn, self.shard, self.lease.token or 0)
            for name, data_type, rows, rejected, _ in loads:
                upsert(conn, data_type.table, data_type.columns, data_type.key, rows)
                if name == self.pipe.data_type:  # the pipeline's watermarks are those of its own data type
                    raise_watermarks(conn, watermarks, self.pipe.name, latest_per_symbol(rows, data_type.columns))
                quarantine_records(conn, rejected, pipeline=self.pipe.name, run_id=self.session_id,
                                   batch_no=self.result.flushes, data_type=name, provider=self.pipe.provider)
                quality.store_findings(conn, findings.get(name, []), pipeline=self.pipe.name, data_type=name,
                                       provider=self.pipe.provider, run_id=self.session_id,
                                       batch_no=self.result.flushes)
        committed = datetime.now(UTC)
        for name, data_type, rows, rejected, fetched in loads:
            self.result.rejected += len(rejected)
            metrics.quality_findings(self.pipe.name, [(f.check, f.severity) for f in findings.get(name, [])])
            if name != self.pipe.data_type:
                self.result.extra_loaded[name] = self.result.extra_loaded.get(name, 0) + len(rows)
                continue
            self.result.loaded += len(rows)
            metrics.records(self.pipe.name, "load", loaded=len(rows))
            metrics.records(self.pipe.name, "transform", fetched=fetched, valid=len(rows), rejected=len(rejected))
            ts_at = data_type.columns.index("ts")
            metrics.ingestion_latencies(self.pipe.name, [(committed - row[ts_at]).total_seconds() for row in rows])

    def _last_commit(self) -> datetime | None:
        with get_engine().connect() as conn:
            return conn.execute(select(stream_fences.c.updated_at).where(stream_fences.c.shard == self.shard)).scalar()

    def _record_gap(self, started: datetime, ended: datetime, reason: str) -> None:
        """Record the window; fill it through the provider's REST API when there is one (a ``gap_fill`` run)."""
        from stockpulse.pipeline.runs import start_gap_fill

        seconds = (ended - started).total_seconds()
        has_rest = self.pipe.data_type in PROVIDERS[self.pipe.provider].fetchers
        run_id, resolution = None, "reported"
        if self.calendar and not traded_between(self.calendar, started, ended):
            resolution = "market closed"  # nothing traded in the window: nothing to fill
        elif has_rest and seconds <= self.options.gap_fill_max_s:
            margin = timedelta(seconds=self.options.gap_margin_s)
            try:
                run_id = start_gap_fill(self.pipe.name, self.symbols, started - margin, ended + margin)
                resolution = "backfill queued"
            except Exception as exc:  # the gap stays recorded as reported, with why
                reason = f"{reason}; gap fill could not start: {type(exc).__name__}: {exc}"
        elif has_rest:
            reason = f"{reason}; longer than gap_fill_max_s ({self.options.gap_fill_max_s:.0f}s): run a backfill"
        with get_engine().begin() as conn:
            conn.execute(stream_gaps.insert().values(pipeline=self.pipe.name, shard=self.shard, started_at=started,
                                                     ended_at=ended, reason=reason[:2000], resolution=resolution,
                                                     backfill_run_id=run_id))
        self.result.gaps.append((started.isoformat(), ended.isoformat(), reason))
        metrics.stream_gap(self.pipe.name, seconds)
        log.warning("stream %s: gap of %.1fs recorded (%s), %s%s", self.shard, seconds, reason, resolution,
                    f" by run {run_id}" if run_id else "",
                    extra={**self.context, "gap_s": round(seconds, 3), "resolution": resolution,
                           "backfill_run_id": run_id})
