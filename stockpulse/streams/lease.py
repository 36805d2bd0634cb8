"""At most one consumer per stream shard across the cluster.

A lease is a Redis key holding the consumer's fencing token, with a TTL the consumer renews while healthy;
the token comes from a per-shard counter, so every new holder has a larger one. Redis alone cannot stop a
consumer that stalled past its TTL from writing when it wakes up, so writes are also fenced in the
database (:func:`fence`): a write carries the token and is refused once a larger token has written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stockpulse.db.models import stream_fences
from stockpulse.errors import StockPulseError

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class LeaseLost(StockPulseError):
    """Another consumer holds the shard now: stop without writing."""


def lease_key(shard: str) -> str:
    return f"stockpulse:stream:lease:{shard}"


class Lease:
    def __init__(self, client: Any, shard: str, ttl_s: float):
        self.client, self.shard, self.ttl_ms = client, shard, int(ttl_s * 1000)
        self.token: int | None = None

    def acquire(self) -> bool:
        token = int(self.client.incr(f"stockpulse:stream:token:{self.shard}"))
        if self.client.set(lease_key(self.shard), token, nx=True, px=self.ttl_ms):
            self.token = token
            return True
        return False

    def renew(self) -> bool:
        return self.token is not None and bool(
            self.client.eval(_RENEW, 1, lease_key(self.shard), self.token, self.ttl_ms))

    def release(self) -> None:
        if self.token is not None:
            self.client.eval(_RELEASE, 1, lease_key(self.shard), self.token)

    @staticmethod
    def holder(client: Any, shard: str) -> int | None:
        value = client.get(lease_key(shard))
        return int(value) if value is not None else None


def fence(conn: Connection, shard: str, token: int) -> None:
    """Within the caller's write transaction: raise LeaseLost if a newer token has written to ``shard``."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(stream_fences).values(shard=shard, token=token, updated_at=datetime.now(UTC))
    stmt = stmt.on_conflict_do_update(index_elements=["shard"],
                                      set_={"token": stmt.excluded.token, "updated_at": stmt.excluded.updated_at},
                                      where=stream_fences.c.token <= stmt.excluded.token)
    # RETURNING, not rowcount: with implicit RETURNING, rowcount does not say whether the WHERE held.
    if conn.execute(stmt.returning(stream_fences.c.token)).first() is None:
        raise LeaseLost(f"stream shard {shard}: a newer consumer (token > {token}) has written; stopping")
