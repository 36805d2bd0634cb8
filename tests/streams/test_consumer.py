"""Stream consumers against the simulator's Finnhub websocket, with real Redis, databases and workers."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from stockpulse.errors import PermanentError
from tests.conftest import Stack, start_worker, table_rows

pytestmark = pytest.mark.integration
PIPELINE = "finnhub_trades"


def stored() -> list[tuple]:
    return sorted((r.symbol, int(round(r.ts.timestamp() * 1000)), r.price, r.size) for r in table_rows("trades"))


def sent(sim: Any) -> list[tuple]:
    return sorted((s, t, p, v) for s, t, p, v, _c in sim.streamed()["sent"])


def wait_until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Running:
    """A consumer in a thread of this process (the worker-level tests start real workers)."""

    def __init__(self, **kwargs: Any):
        from stockpulse.streams.consumer import StreamConsumer

        self.stop = threading.Event()
        self.consumer = StreamConsumer(PIPELINE, 0, stop=self.stop, **kwargs)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> Any:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()
        return self.consumer.result


@pytest.fixture()
def stream(clean_stack: Stack, sim: Any, redis_client: Any) -> Any:
    sim.stream("reset")
    for key in redis_client.scan_iter("stockpulse:stream:*"):
        redis_client.delete(key)
    yield sim
    sim.stream("reset")


def test_every_tick_sent_is_stored_once_across_a_drop_and_a_malformed_frame(stream: Any) -> None:
    running = Running()
    wait_until(lambda: len(stream.streamed()["sent"]) >= 150, "150 ticks")
    stream.stream("malformed")
    stream.stream("drop")  # cut without a close frame: the consumer reconnects and records the gap
    wait_until(lambda: running.consumer.result.connects >= 2, "a reconnect")
    wait_until(lambda: len(stream.streamed()["sent"]) >= 400, "400 ticks")
    stream.stream("pause")
    time.sleep(0.5)  # > flush_ms: everything received is committed
    result = running.finish()
    assert running.error is None
    assert stored() == sent(stream)  # no loss, no duplicate
    assert result.loaded == len(stored())
    [gap] = table_rows("stream_gaps")
    assert gap.pipeline == PIPELINE and gap.resolution == "reported" and gap.ended_at >= gap.started_at
    [bad] = table_rows("quarantine")
    assert bad.reason == "frame is not valid JSON" and bad.pipeline == PIPELINE
    marks = {w.symbol for w in table_rows("watermarks") if w.pipeline == PIPELINE}
    assert marks == {"AAPL", "MSFT", "IBM"}


def test_a_replayed_frame_loads_nothing_twice(stream: Any) -> None:
    from stockpulse.streams.consumer import StreamConsumer

    consumer = StreamConsumer(PIPELINE, 0)
    assert consumer.lease.acquire()
    frame = ('{"data":[{"c":["1","12"],"p":122.1,"s":"AAPL","t":1672348887195,"v":1},'
             '{"c":["1","12"],"p":122.1,"s":"AAPL","t":1672348887195,"v":1},'
             '{"c":null,"p":129.58,"s":"MSFT","t":1672348887666,"v":4}],"type":"trade"}')
    for _ in range(3):
        consumer._take(frame)
        consumer._flush()
    consumer.lease.release()
    rows = table_rows("trades")
    assert len(rows) == 3  # two identical trades in one frame are two trades; replays add nothing
    assert {r.ts.isoformat() for r in rows} == {"2022-12-29T21:21:27.195000+00:00", "2022-12-29T21:21:27.666000+00:00"}


def test_a_silent_stream_is_reconnected(stream: Any) -> None:
    running = Running()
    wait_until(lambda: running.consumer.result.connects == 1 and stream.streamed()["sent"], "ticks")
    stream.stream("stall", seconds=4)  # longer than silence_s (3 s)
    wait_until(lambda: running.consumer.result.connects >= 2, "a reconnect after the silence", timeout=15)
    result = running.finish()
    assert any("silent for 3s" in reason for _, _, reason in result.gaps)


def test_a_refused_key_stops_the_consumer_with_a_clear_error(stream: Any) -> None:
    stream.stream("reject")
    running = Running()
    running.thread.join(10)
    assert not running.thread.is_alive()
    assert isinstance(running.error, PermanentError) and "HTTP 401" in str(running.error)
    assert running.consumer.result.connects == 0


def test_only_the_newest_lease_holder_writes(stream: Any, redis_client: Any) -> None:
    from stockpulse.db.engine import get_engine
    from stockpulse.streams.consumer import StreamConsumer
    from stockpulse.streams.lease import Lease, LeaseLost, fence, lease_key

    first = Running()
    wait_until(lambda: first.consumer.result.loaded > 0, "the first consumer loading")
    second = StreamConsumer(PIPELINE, 0)
    assert second.run().ended == "lease held by another consumer"
    # The first consumer stalls past its TTL (simulated: its lease vanishes) and a new one takes over.
    redis_client.delete(lease_key("finnhub_trades:0"))
    takeover = Lease(redis_client, "finnhub_trades:0", 4)
    assert takeover.acquire() and takeover.token > first.consumer.lease.token
    with get_engine().begin() as conn:
        fence(conn, "finnhub_trades:0", takeover.token)
    wait_until(lambda: first.error is not None or not first.thread.is_alive(), "the stale consumer to stop")
    assert first.consumer.result.ended.startswith(("stream shard finnhub_trades:0", "lease"))
    with pytest.raises(LeaseLost), get_engine().begin() as conn:
        fence(conn, "finnhub_trades:0", first.consumer.lease.token)
    first.finish()
    takeover.release()


def test_a_killed_worker_s_shard_is_taken_over_within_the_lease_ttl(stream: Any, clean_stack: Stack) -> None:
    from stockpulse.streams.tasks import supervise_streams

    clean_stack.restart_worker(queues="historical,maintenance")  # only the realtime workers below stream
    workers = [start_worker("rt-0", queues="realtime", pool="threads", concurrency=4)]
    try:
        supervise_streams.apply()  # sends one consume task for the one shard
        wait_until(lambda: len(table_rows("trades")) > 50, "ticks from the first worker")
        killed_at = time.monotonic()
        workers[0].kill(signal.SIGKILL)
        workers.append(start_worker("rt-1", queues="realtime", pool="threads", concurrency=4))
        before = len(table_rows("trades"))
        while len(table_rows("trades")) <= before:
            supervise_streams.apply()  # what beat does every 30 s
            assert time.monotonic() - killed_at < 4 + 15, "no takeover within the lease TTL"
            time.sleep(0.5)
        took_over = time.monotonic() - killed_at
        stream.stream("pause")
        time.sleep(0.5)
        rows, went_out = stored(), set(sent(stream))
        assert len(rows) == len(set(rows)) and set(rows) <= went_out  # nothing twice, nothing invented
        assert took_over < 4 + 15
        # Ticks the killed worker had received but not yet committed (< one flush) are the only ones missing;
        # Finnhub has no REST source to backfill them from.
    finally:
        for worker in workers:
            worker.stop()


def test_stream_metrics_and_ticks_latency(stream: Any) -> None:
    from stockpulse.observability import metrics

    running = Running()
    wait_until(lambda: running.consumer.result.loaded >= 100, "100 ticks")
    running.finish()
    samples = {s.name: s for m in metrics.metrics().latency.collect() for s in m.samples}
    assert samples["stockpulse_ingestion_latency_seconds_count"].value >= 100
    newest = max(r.ts for r in table_rows("trades"))
    assert (datetime.now(UTC) - newest).total_seconds() < 30


def test_a_stream_pipeline_cannot_be_run_as_a_batch_chain() -> None:
    from stockpulse.errors import ConfigError
    from stockpulse.pipeline.runs import start_run

    with pytest.raises(ConfigError, match="is a stream"):
        start_run(PIPELINE)
