"""One stream shard's consumer: connect, subscribe, read frames, micro-batch, load, reconnect.

Ticks are validated (the trades schema is the contract; bad ones are quarantined with a reason) and
flushed every ``flush_ms`` or ``flush_max`` ticks, whichever comes first, in one transaction that also
checks the shard's fencing token. A disconnect or a silence longer than ``silence_s`` closes the
connection, records the gap and reconnects with exponential backoff and jitter; an error the provider
states as permanent (a refused key) ends the consumer with that error instead of reconnecting in a storm.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from math import ceil
from typing import Any

import websocket

from stockpulse.config import PipelineSettings, get_settings
from stockpulse.datatypes import get_data_type
from stockpulse.datatypes.base import Rejected
from stockpulse.db.engine import get_engine
from stockpulse.db.models import stream_gaps, watermarks
from stockpulse.errors import PermanentError, TransientError, classify
from stockpulse.observability import metrics
from stockpulse.pipeline.loader import latest_per_symbol, raise_watermarks, upsert
from stockpulse.pipeline.quarantine import quarantine_records
from stockpulse.providers import PROVIDERS
from stockpulse.redis_conn import redis_client
from stockpulse.streams.lease import Lease, LeaseLost, fence

log = logging.getLogger("stockpulse.streams")


@dataclass(frozen=True)
class StreamOptions:
    shard_size: int = 50
    flush_ms: float = 100.0
    flush_max: int = 1000
    silence_s: float = 30.0
    lease_ttl_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    max_session_s: float = 3600.0  # then the supervisor starts a fresh consumer (picks up config changes)

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
    ended: str = ""


class StreamConsumer:
    def __init__(self, pipeline: str, shard_no: int, *, stop: threading.Event | None = None):
        settings = get_settings()
        self.pipe = settings.pipeline(pipeline)
        self.options = StreamOptions.of(self.pipe)
        self.symbols = shards(self.pipe)[shard_no]
        self.shard = shard_name(pipeline, shard_no)
        self.stream = PROVIDERS[self.pipe.provider].streams[self.pipe.data_type](settings.provider(self.pipe.provider))
        self.data_type = get_data_type(self.pipe.data_type)
        self.stop = stop or threading.Event()
        self.lease = Lease(redis_client(), self.shard, self.options.lease_ttl_s)
        self.session_id = str(uuid.uuid4())
        self.buffer: list[Any] = []
        self.rejected: list[Rejected] = []
        self.record_no = 0
        self.result = Session()
        self.state: str | None = None
        self.context = {"pipeline": pipeline, "shard": self.shard, "provider": self.pipe.provider,
                        "data_type": self.pipe.data_type}

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> Session:
        acquired = self.lease.acquire()
        redis_client().delete(starting_key(self.shard))
        if not acquired:
            self.result.ended = "lease held by another consumer"
            return self.result
        log.info("stream %s: lease acquired (token %s), %d symbols", self.shard, self.lease.token,
                 len(self.symbols), extra={**self.context, "token": self.lease.token})
        self._set_state("connecting")
        try:
            self._consume()
        except LeaseLost as exc:
            self.result.ended = str(exc)
            log.warning("stream %s: %s", self.shard, exc, extra=self.context)
        finally:
            try:
                self._flush()
            except LeaseLost:
                pass
            self.lease.release()
            self._set_state(None)
            log.info("stream %s: stopped (%s): %d ticks loaded, %d quarantined, %d connections", self.shard,
                     self.result.ended or "stop requested", self.result.loaded, self.result.rejected,
                     self.result.connects, extra={**self.context, "records_loaded": self.result.loaded})
        return self.result

    def _consume(self) -> None:
        began, attempt = time.monotonic(), 0
        disconnected_at: datetime | None = None
        reason = ""
        while not self.stop.is_set():
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
                disconnected_at = disconnected_at or datetime.now(UTC)
                reason = reason or f"connect failed: {error}"
                self._set_state("reconnecting")
                self._wait(delay)
                continue
            self.result.connects += 1
            self._set_state("connected")
            if disconnected_at is not None:
                self._record_gap(disconnected_at, datetime.now(UTC), reason)
                metrics.stream_reconnect(self.pipe.name, reason.split(":")[0])
                disconnected_at, reason = None, ""
            attempt = 0
            try:
                for message in [*self.stream.handshake(), *self.stream.subscribe(self.symbols)]:
                    ws.send(message)
                self._read(ws)
            except (websocket.WebSocketException, OSError, TransientError) as exc:
                disconnected_at = datetime.now(UTC)
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("stream %s: connection lost (%s); reconnecting", self.shard, reason, extra=self.context)
                self._set_state("reconnecting")
            finally:
                try:
                    ws.close(timeout=1)
                except Exception:
                    pass
            self._flush()

    def _read(self, ws: Any) -> None:
        flush_every = self.options.flush_ms / 1000
        renew_every = self.options.lease_ttl_s / 3
        now = time.monotonic()
        next_flush, next_renew, last_frame = now + flush_every, now + renew_every, now
        while not self.stop.is_set():
            ws.settimeout(max(0.001, min(next_flush, next_renew, last_frame + self.options.silence_s) - now))
            try:
                text = ws.recv()
            except websocket.WebSocketTimeoutException:
                text = None
            now = time.monotonic()
            if text:
                last_frame = now
                self._take(text)
            elif text is not None and text == "":
                raise websocket.WebSocketConnectionClosedException("connection closed by the provider")
            if now - last_frame > self.options.silence_s:
                raise TransientError(f"silent for {self.options.silence_s:.0f}s")
            if now >= next_flush or len(self.buffer) >= self.options.flush_max:
                self._flush()
                next_flush = now + flush_every
            if now >= next_renew:
                if not self.lease.renew():
                    raise LeaseLost(f"stream shard {self.shard}: lease expired or taken over")
                next_renew = now + renew_every

    def _take(self, text: str | bytes) -> None:
        frame = self.stream.parse(text if isinstance(text, str) else text.decode("utf-8", "replace"))
        if frame.error is not None:
            self.result.ended = f"{type(frame.error).__name__}: {frame.error}"
            raise frame.error
        if frame.malformed:
            self.rejected.append(Rejected(self._next_no(), {"frame": str(text)[:2000]}, frame.malformed))
        for record in frame.records:
            self.buffer.append((self._next_no(), record))

    def _set_state(self, state: str | None) -> None:
        metrics.stream_state(self.pipe.name, self.state, state)
        self.state = state

    def _next_no(self) -> int:
        self.record_no += 1
        return self.record_no

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            if not self.lease.renew():
                raise LeaseLost(f"stream shard {self.shard}: lease expired while reconnecting")
            self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic()), self.options.lease_ttl_s / 3))

    # ----------------------------------------------------------------------------------------- load

    def _flush(self) -> None:
        if not self.buffer and not self.rejected:
            return
        batch, self.buffer = self.buffer, []
        rejected, self.rejected = self.rejected, []
        result = self.data_type.validate(record for _, record in batch)
        # validate() numbers records by position in this batch; quarantine rows need session-wide numbers.
        rejected += [Rejected(batch[r.record_no][0], r.record, r.reason) for r in result.rejected]
        rows = [self.data_type.from_row(r) for r in self.data_type.rows(result.valid)]
        self.result.flushes += 1
        with get_engine().begin() as conn:
            fence(conn, self.shard, self.lease.token or 0)
            upsert(conn, self.data_type.table, self.data_type.columns, self.data_type.key, rows)
            raise_watermarks(conn, watermarks, self.pipe.name, latest_per_symbol(rows, self.data_type.columns))
            quarantine_records(conn, rejected, pipeline=self.pipe.name, run_id=self.session_id,
                               batch_no=self.result.flushes, data_type=self.pipe.data_type,
                               provider=self.pipe.provider)
        committed = datetime.now(UTC)
        self.result.loaded += len(rows)
        self.result.rejected += len(rejected)
        metrics.records(self.pipe.name, "load", loaded=len(rows))
        metrics.records(self.pipe.name, "transform", fetched=len(batch), valid=len(rows), rejected=len(rejected))
        ts_at = self.data_type.columns.index("ts")
        metrics.ingestion_latencies(self.pipe.name, [(committed - row[ts_at]).total_seconds() for row in rows])

    def _record_gap(self, started: datetime, ended: datetime, reason: str) -> None:
        """No REST source for this stream's ticks: the gap is recorded and reported (stream_gaps)."""
        with get_engine().begin() as conn:
            conn.execute(stream_gaps.insert().values(pipeline=self.pipe.name, shard=self.shard, started_at=started,
                                                     ended_at=ended, reason=reason[:2000], resolution="reported"))
        self.result.gaps.append((started.isoformat(), ended.isoformat(), reason))
        metrics.stream_gap(self.pipe.name, (ended - started).total_seconds())
        log.warning("stream %s: gap of %.1fs recorded (%s)", self.shard, (ended - started).total_seconds(), reason,
                    extra={**self.context, "gap_s": round((ended - started).total_seconds(), 3)})
