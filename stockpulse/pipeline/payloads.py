"""Stage-to-stage hand-off. Small payloads travel inline in the task message; above a threshold the payload
is stored in Redis with a TTL and only a reference crosses the broker. The load stage deletes the stored
payloads of its batch once its transaction has committed."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from stockpulse.config import get_settings
from stockpulse.errors import PermanentError
from stockpulse.redis_conn import redis_client

KEY_PREFIX = "stockpulse:payload:"


def put(value: Any, *, run_id: str, label: str) -> dict[str, Any]:
    settings = get_settings().payloads
    data = orjson.dumps(value)
    if len(data) <= int(settings.get("inline_max_bytes", 65536)):
        return {"inline": value, "bytes": len(data)}
    key = f"{KEY_PREFIX}{run_id}:{label}:{uuid.uuid4().hex}"
    redis_client().set(key, data, ex=int(settings.get("ttl_s", 86400)))
    return {"ref": key, "bytes": len(data)}


def get(handle: dict[str, Any]) -> Any:
    if "inline" in handle:
        return handle["inline"]
    data = redis_client().get(handle["ref"])
    if data is None:
        raise PermanentError(f"stored payload {handle['ref']} is gone (expired, or Redis lost it); "
                             "re-run the pipeline for this range")
    return orjson.loads(data)


def exists(handle: dict[str, Any] | None) -> bool:
    return bool(handle) and ("inline" in handle or bool(redis_client().exists(handle["ref"])))


def delete(*handles: dict[str, Any] | None) -> None:
    keys = [h["ref"] for h in handles if h and "ref" in h]
    if keys:
        redis_client().delete(*keys)
