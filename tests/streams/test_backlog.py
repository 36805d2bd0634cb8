"""Back-pressure: a database that stops taking writes fills the bounded backlog, the rest spills to Redis,
and everything is loaded once the database is back (real Redis, real databases, a real consumer)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from stockpulse.streams.backlog import Backlog, Batch, spill_key
from tests.conftest import Stack, table_rows
from tests.streams.helpers import Running, sent, stored, wait_until

pytestmark = pytest.mark.integration


@contextmanager
def holding_the_trades_table(url: str) -> Iterator[None]:
    """Another session holds the trades table (PostgreSQL) or the database's write lock (SQLite): every
    commit of the consumer waits or fails meanwhile."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    from stockpulse.db.engine import get_engine

    with get_engine().connect() as conn, conn.begin() as tx:
        conn.exec_driver_sql("LOCK TABLE trades IN SHARE ROW EXCLUSIVE MODE")
        yield
        tx.rollback()


def test_a_blocked_database_spills_to_redis_and_loses_nothing(stream: Any, enable: Any, clean_stack: Stack,
                                                                redis_client: Any) -> None:
    from stockpulse.observability import metrics

    enable("finnhub_trades", max_backlog=100)
    running = Running()
    wait_until(lambda: running.consumer.result.loaded > 0, "ticks loading")
    with holding_the_trades_table(clean_stack.url):
        wait_until(lambda: running.consumer.backlog.spilled > 0, "the backlog to overflow into Redis", timeout=30)
        assert redis_client.llen(spill_key("finnhub_trades:0")) > 0
    wait_until(lambda: redis_client.llen(spill_key("finnhub_trades:0")) == 0, "the spill to drain", timeout=30)
    stream.stream("pause")
    time.sleep(0.5)
    running.finish()
    assert running.error is None
    assert stored() == sent(stream)  # every tick, once, through memory, Redis and a blocked database
    spilled = metrics.metrics().stream_spilled.labels(pipeline="finnhub_trades", data_type="trades",
                                                      provider="finnhub")._value.get()
    assert spilled >= running.consumer.backlog.spilled > 0


def test_a_spill_left_by_a_consumer_that_lost_its_lease_is_loaded_by_the_next(stream: Any, clean_stack: Stack,
                                                                              redis_client: Any) -> None:
    # What a consumer that lost its lease leaves behind: its batches, spilled for the shard.
    leftover = Batch({"trades": [(1, {"source": "finnhub", "symbol": "AAPL", "ts": "2026-01-02T15:00:00+00:00",
                                      "trade_id": "spilled-1", "price": 10.5, "size": 3, "conditions": None,
                                      "exchange": None})]},
                     [(2, {"frame": "{"}, "frame is not valid JSON")])
    redis_client.rpush(spill_key("finnhub_trades:0"), leftover.dumps())
    running = Running()
    wait_until(lambda: any(r.trade_id == "spilled-1" for r in table_rows("trades")), "the spilled tick")
    running.finish()
    assert redis_client.llen(spill_key("finnhub_trades:0")) == 0
    assert [q.reason for q in table_rows("quarantine")] == ["frame is not valid JSON"]


def test_batches_round_trip_through_redis_and_merge() -> None:
    a = Batch({"trades": [(1, {"p": 1})]}, [(2, {"frame": "x"}, "bad")], received=10.0)
    b = Batch.loads(a.dumps())
    assert (b.records, b.rejected, b.received) == ({"trades": [(1, {"p": 1})]}, [(2, {"frame": "x"}, "bad")], 10.0)
    b.merge(Batch({"trades": [(3, {"p": 2})], "bars": [(4, {})]}, received=5.0))
    assert len(b) == 4 and b.received == 5.0 and [n for n, _ in b.records["trades"]] == [1, 3]


def test_an_unreadable_spill_entry_is_moved_aside_not_dropped(redis_client: Any) -> None:
    key = spill_key("unit:0")
    redis_client.delete(key, f"{key}:unreadable")
    redis_client.rpush(key, b"not json")
    backlog = Backlog("unit:0", "finnhub_trades", redis_client, lambda batch: None, max_ticks=10)
    assert backlog._unspill() is None
    assert redis_client.lrange(f"{key}:unreadable", 0, -1) == [b"not json"]
    redis_client.delete(f"{key}:unreadable")
