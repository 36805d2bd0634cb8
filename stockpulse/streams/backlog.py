"""Ticks between a stream's socket and the database: bounded in memory, spilled to Redis, loaded by a thread.

The reader never waits for the database: every ``flush_ms`` it hands a micro-batch to the backlog and goes
back to the socket (a provider disconnects a client that stops reading: Alpaca's 407 "slow client"). A
loader thread commits batches, merging what queued up while the previous commit ran. When the database
slows down, the in-memory backlog grows to ``max_backlog`` ticks; batches beyond it go to a Redis list for
the shard, loaded once memory has drained, so nothing is dropped. A failed commit is retried with backoff,
never skipped. A consumer that loses its lease spills what it still holds instead of loading it, and the
shard's next consumer loads the spill: the spill belongs to the shard, not to one consumer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from stockpulse.observability import metrics
from stockpulse.streams.lease import LeaseLost

log = logging.getLogger("stockpulse.streams")
MERGE_MAX_TICKS = 20_000  # one commit loads at most this many ticks of queued batches
RETRY_CAP_S = 10.0


def spill_key(shard: str) -> str:
    return f"stockpulse:stream:spill:{shard}"


@dataclass
class Batch:
    """One micro-batch: records by data type as (session record number, raw record), and frames that could
    not be read at all as (record number, record, reason)."""

    records: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    rejected: list[tuple[int, Any, str]] = field(default_factory=list)
    received: float = field(default_factory=time.time)  # when its oldest tick arrived (UNIX time)

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values()) + len(self.rejected)

    def merge(self, other: Batch) -> None:
        for data_type, records in other.records.items():
            self.records.setdefault(data_type, []).extend(records)
        self.rejected.extend(other.rejected)
        self.received = min(self.received, other.received)

    def dumps(self) -> bytes:
        return orjson.dumps({"records": self.records, "rejected": self.rejected, "received": self.received})

    @classmethod
    def loads(cls, raw: bytes) -> Batch:
        data = orjson.loads(raw)
        return cls({k: [tuple(r) for r in v] for k, v in data["records"].items()},
                   [tuple(r) for r in data["rejected"]], data["received"])


class Backlog:
    def __init__(self, shard: str, pipeline: str, redis: Any, load: Callable[[Batch], None], *,
                 max_ticks: int, drain_s: float = 10.0):
        self.shard, self.pipeline, self.redis, self.load = shard, pipeline, redis, load
        self.max_ticks, self.drain_s = max_ticks, drain_s
        self.queue: deque[Batch] = deque()
        self.queued_ticks = 0
        self.cond = threading.Condition()
        self.closing = False
        self.lost: LeaseLost | None = None  # set when a commit found a newer consumer's token
        self.spilled = 0  # ticks this consumer spilled
        self.thread = threading.Thread(target=self._run, name=f"stream-loader-{shard}", daemon=True)

    # ----------------------------------------------------------------------------------- reader side

    def start(self) -> None:
        self.thread.start()

    def put(self, batch: Batch) -> None:
        if not len(batch):
            return
        with self.cond:
            if self.lost is None and self.queued_ticks + len(batch) <= self.max_ticks:
                self.queue.append(batch)
                self.queued_ticks += len(batch)
                self.cond.notify()
                return
        self._spill([batch], why="lease lost" if self.lost else f"backlog over {self.max_ticks} ticks")

    def close(self) -> None:
        """Commit what memory holds (up to ``drain_s``); spill whatever is left; stop the loader."""
        deadline = time.monotonic() + self.drain_s
        with self.cond:
            self.closing = True
            self.cond.notify()
            while self.queue and self.lost is None and time.monotonic() < deadline and self.thread.is_alive():
                self.cond.wait(0.1)
            left, self.queue, self.queued_ticks = list(self.queue), deque(), 0
        if left:
            self._spill(left, why="consumer stopping before they were committed")
        self.thread.join(self.drain_s)
        self._gauges(0, 0)

    # ----------------------------------------------------------------------------------- loader side

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing and not self._spill_waiting():
                    self.cond.wait(0.2)
                if self.closing and not self.queue:
                    return
                batch = self._take()
            if batch is None:
                batch = self._unspill()
                if batch is None:
                    continue
            self._load_until_done(batch)
            if self.lost is not None:
                return

    def _take(self) -> Batch | None:
        """All queued batches up to MERGE_MAX_TICKS, merged (caller holds the lock); None if memory is empty."""
        if not self.queue:
            return None
        batch = self.queue.popleft()
        while self.queue and len(batch) + len(self.queue[0]) <= MERGE_MAX_TICKS:
            batch.merge(self.queue.popleft())
        self.queued_ticks -= len(batch)
        return batch

    def _load_until_done(self, batch: Batch) -> None:
        attempt = 0
        while True:
            self._gauges(self.queued_ticks + len(batch), time.time() - batch.received)
            try:
                self.load(batch)
                self._gauges(self.queued_ticks, 0 if not self.queue else time.time() - self.queue[0].received)
                return
            except LeaseLost as exc:
                with self.cond:
                    self.lost = exc
                    left, self.queue, self.queued_ticks = [batch, *self.queue], deque(), 0
                    self.cond.notify_all()
                self._spill(left, why="lease lost")
                return
            except Exception as exc:
                # The database is down or slow to the point of errors: keep the batch and try again.
                attempt += 1
                delay = min(RETRY_CAP_S, 0.2 * 2 ** attempt)
                log.warning("stream %s: commit of %d ticks failed (%s: %s); retrying in %.1fs", self.shard,
                            len(batch), type(exc).__name__, exc, delay,
                            extra={"shard": self.shard, "pipeline": self.pipeline, "attempt": attempt})
                if self.closing and attempt >= 3:
                    self._spill([batch], why=f"commit failing while stopping ({type(exc).__name__})")
                    return
                time.sleep(delay)

    # --------------------------------------------------------------------------------------- spill

    def _spill(self, batches: list[Batch], *, why: str) -> None:
        ticks = sum(len(b) for b in batches)
        if not ticks:
            return
        pipe = self.redis.pipeline()
        for batch in batches:
            pipe.rpush(spill_key(self.shard), batch.dumps())
        pipe.execute()
        self.spilled += ticks
        metrics.stream_spilled(self.pipeline, ticks)
        log.warning("stream %s: spilled %d ticks to Redis (%s); they load once the backlog drains", self.shard,
                    ticks, why, extra={"shard": self.shard, "pipeline": self.pipeline, "ticks": ticks})

    def _spill_waiting(self) -> bool:
        try:
            return bool(self.redis.llen(spill_key(self.shard)))
        except Exception:  # Redis unreachable: memory still drains
            return False

    def _unspill(self) -> Batch | None:
        try:
            raw = self.redis.lpop(spill_key(self.shard))
        except Exception as exc:
            log.warning("stream %s: cannot read the spill (%s)", self.shard, exc, extra={"shard": self.shard})
            time.sleep(1)
            return None
        if raw is None:
            return None
        try:
            return Batch.loads(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # Never drop silently: keep the unreadable entry aside for an operator.
            self.redis.rpush(f"{spill_key(self.shard)}:unreadable", raw)
            log.error("stream %s: unreadable spilled batch moved to %s:unreadable (%s)", self.shard,
                      spill_key(self.shard), exc, extra={"shard": self.shard, "pipeline": self.pipeline})
            return None

    def _gauges(self, memory_ticks: int, lag_s: float) -> None:
        metrics.stream_backlog(self.pipeline, self.shard, memory_ticks, max(lag_s, 0.0))
