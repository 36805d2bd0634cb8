"""Responses of a fetch in progress, kept in Redis until the fetch stage has stored its payload.

A fetch that re-queues itself (quota wait, open breaker, transient failure, dead worker) resumes from
here instead of asking the provider again: under a tight quota a restarted multi-page fetch would
otherwise spend its slots on pages it already had, and never finish.
"""

from __future__ import annotations

from typing import Any

import orjson

from stockpulse.config import get_settings
from stockpulse.redis_conn import redis_client

KEY = "stockpulse:fetch-checkpoint:{run_id}:{batch_no}"


class FetchCheckpoint:
    def __init__(self, run_id: str, batch_no: int):
        self.key = KEY.format(run_id=run_id, batch_no=batch_no)

    def get(self, request_key: str) -> Any | None:
        raw = redis_client().hget(self.key, request_key)
        return None if raw is None else orjson.loads(raw)

    def put(self, request_key: str, value: Any) -> None:
        pipe = redis_client().pipeline()
        pipe.hset(self.key, request_key, orjson.dumps(value))
        pipe.expire(self.key, int(get_settings().payloads.get("ttl_s", 86400)))
        pipe.execute()

    def clear(self) -> None:
        redis_client().delete(self.key)
