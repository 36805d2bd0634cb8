"""The dead-letter queue, in Redis: stages that exhausted their retries or hit a permanent error.

Entries live in a hash (id -> JSON) with a sorted-set index by last failure time, capped in count and
retention. One entry per failed batch (``<run id>:<batch no>``): a second failure of the same batch updates
it, keeping the first failure time. Replay starts a new run (trigger ``replay``) for the same batch from the
failed stage when that stage's input is still stored, else from fetch; the entry is removed only once the
new run is enqueued. Loads are idempotent, so replaying the same batch twice loads nothing twice.
"""

from __future__ import annotations

import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from stockpulse.config import get_settings, redact_text
from stockpulse.errors import StockPulseError
from stockpulse.redis_conn import redis_client

ENTRIES_KEY = "stockpulse:dlq:entries"
INDEX_KEY = "stockpulse:dlq:index"


class UnknownEntry(StockPulseError):
    pass


@dataclass
class DeadLetter:
    id: str
    pipeline: str
    run_id: str
    batch_no: int
    stage: str
    task_name: str
    kwargs: dict[str, Any]
    stage_input: Any
    error_type: str
    message: str
    traceback: str
    attempts: int
    first_failure: float
    last_failure: float
    worker: str
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_failure(cls, *, task_name: str, stage: str, kwargs: dict[str, Any], stage_input: Any,
                     error: BaseException, original: BaseException, attempts: int,
                     worker: str | None) -> DeadLetter:
        now = time.time()
        tb = "".join(traceback.format_exception(type(original), original, original.__traceback__))
        safe_kwargs = {k: v for k, v in kwargs.items() if k in ("run_id", "batch_no", "pipeline")}
        return cls(
            id=f"{kwargs['run_id']}:{kwargs['batch_no']}", pipeline=kwargs.get("pipeline", ""),
            run_id=kwargs["run_id"], batch_no=int(kwargs["batch_no"]), stage=stage, task_name=task_name,
            kwargs=safe_kwargs, stage_input=stage_input, error_type=type(error).__name__,
            message=redact_text(str(error))[:4000], traceback=redact_text(tb)[-20000:], attempts=attempts,
            first_failure=now, last_failure=now, worker=worker or socket.gethostname(),
        )

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stage_input")
        data.pop("traceback")
        data["first_failure"] = _iso(self.first_failure)
        data["last_failure"] = _iso(self.last_failure)
        return data


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _limits() -> tuple[int, float]:
    conf = get_settings().dlq
    return int(conf.get("max_entries", 10000)), float(conf.get("retention_days", 30)) * 86400


def add(entry: DeadLetter) -> DeadLetter:
    client = redis_client()
    previous = client.hget(ENTRIES_KEY, entry.id)
    if previous:
        old = DeadLetter(**orjson.loads(previous))
        entry.first_failure = old.first_failure
        entry.attempts += old.attempts
        entry.history = [*old.history, {"stage": old.stage, "error_type": old.error_type,
                                        "message": old.message, "at": _iso(old.last_failure)}][-20:]
    max_entries, retention_s = _limits()
    pipe = client.pipeline()
    pipe.hset(ENTRIES_KEY, entry.id, orjson.dumps(asdict(entry)))
    pipe.zadd(INDEX_KEY, {entry.id: entry.last_failure})
    pipe.execute()
    _trim(max_entries, time.time() - retention_s)
    return entry


def _trim(max_entries: int, oldest_kept: float) -> None:
    client = redis_client()
    expired = client.zrangebyscore(INDEX_KEY, "-inf", oldest_kept)
    overflow = max(0, client.zcard(INDEX_KEY) - len(expired) - max_entries)
    if overflow:
        expired += client.zrange(INDEX_KEY, len(expired), len(expired) + overflow - 1)
    if expired:
        _remove(expired)


def _remove(ids: list[Any]) -> int:
    if not ids:
        return 0
    pipe = redis_client().pipeline()
    pipe.hdel(ENTRIES_KEY, *ids)
    pipe.zrem(INDEX_KEY, *ids)
    return int(pipe.execute()[0])


def get(entry_id: str) -> DeadLetter:
    raw = redis_client().hget(ENTRIES_KEY, entry_id)
    if raw is None:
        raise UnknownEntry(f"no dead-letter entry {entry_id!r} (already replayed or purged?)")
    return DeadLetter(**orjson.loads(raw))


def entries(*, pipeline: str | None = None, since: float | None = None) -> list[DeadLetter]:
    """Newest first."""
    client = redis_client()
    ids = client.zrevrangebyscore(INDEX_KEY, "+inf", since if since is not None else "-inf")
    if not ids:
        return []
    found = [DeadLetter(**orjson.loads(raw)) for raw in client.hmget(ENTRIES_KEY, ids) if raw]
    return [e for e in found if pipeline is None or e.pipeline == pipeline]


def depth() -> int:
    return int(redis_client().zcard(INDEX_KEY))


def purge(entry_id: str | None = None, *, older_than_s: float | None = None) -> int:
    if entry_id is not None:
        get(entry_id)
        return _remove([entry_id])
    if older_than_s is None:
        raise ValueError("purge needs an entry id or an age")
    return _remove(redis_client().zrangebyscore(INDEX_KEY, "-inf", time.time() - older_than_s))


def replay(entry_id: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Re-run the failed batch in a new run with a fresh retry budget; returns what was (or would be) done."""
    from stockpulse.pipeline.runs import start_replay

    entry = get(entry_id)
    plan = {"entry": entry.id, "pipeline": entry.pipeline, "original_run": entry.run_id, "batch_no": entry.batch_no,
            "failed_stage": entry.stage}
    if dry_run:
        return {**plan, "dry_run": True}
    run_id, from_stage = start_replay(entry)
    # Only now that the new run is enqueued is the entry dropped: a crash before this leaves it for another try.
    _remove([entry.id])
    return {**plan, "replay_run": run_id, "from_stage": from_stage}
