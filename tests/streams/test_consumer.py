"""Stream consumers against the simulator's Finnhub websocket, with real Redis, databases and workers."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from stockpulse.errors import PermanentError
from tests.conftest import Stack, start_worker, table_rows
from tests.streams.helpers import Running, sent, stored, wait_until

pytestmark = pytest.mark.integration
PIPELINE = "finnhub_trades"


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
    from stockpulse.streams.backlog import Batch
    from stockpulse.streams.consumer import StreamConsumer

    consumer = StreamConsumer(PIPELINE, 0)
    assert consumer.lease.acquire()
    frame = ('{"data":[{"c":["1","12"],"p":122.1,"s":"AAPL","t":1672348887195,"v":1},'
             '{"c":["1","12"],"p":122.1,"s":"AAPL","t":1672348887195,"v":1},'
             '{"c":null,"p":129.58,"s":"MSFT","t":1672348887666,"v":4}],"type":"trade"}')
    for _ in range(3):
        consumer._take(frame)
        batch, consumer.batch, consumer.buffered = consumer.batch, Batch(), 0
        consumer._load(batch)
    consumer.lease.release()
    rows = table_rows("trades")
    assert len(rows) == 3  # two identical trades in one frame are two trades; replays add nothing
    assert {r.ts.isoformat() for r in rows} == {"2022-12-29T21:21:27.195000+00:00", "2022-12-29T21:21:27.666000+00:00"}


def test_tick_quality_checks_run_in_the_consumer_s_load(stream: Any, enable: Any) -> None:
    import json

    from stockpulse.streams.backlog import Batch
    from stockpulse.streams.consumer import StreamConsumer

    enable(PIPELINE, quality="{price_band: {severity: error}}")
    consumer = StreamConsumer(PIPELINE, 0)
    assert consumer.lease.acquire()
    now_ms = int(time.time() * 1000) - 2000

    def frame(*trades: tuple[str, float, float]) -> str:
        nonlocal now_ms
        now_ms += 10
        return json.dumps({"type": "trade", "data": [{"c": None, "p": p, "s": s, "t": now_ms + i, "v": v}
                                                     for i, (s, p, v) in enumerate(trades)]})

    # The band carries from one commit to the next: the bad print arrives in the second.
    for text in (frame(*(("AAPL", p, 10) for p in (100.0, 100.1, 99.9, 100.0, 100.2))),
                 frame(("AAPL", 150.0, 10), ("AAPL", 100.1, 10), ("MSFT", 400.0, 0))):
        consumer._take(text)
        batch, consumer.batch, consumer.buffered = consumer.batch, Batch(), 0
        consumer._load(batch)
    consumer.lease.release()
    assert sorted(r.price for r in table_rows("trades")) == [99.9, 100.0, 100.0, 100.1, 100.1, 100.2, 400.0]
    [print_] = table_rows("quarantine")
    assert print_.reason == "quality check price_band: price 150 is +50.0% from the median 100 of the last 5 trades"
    assert print_.run_id == consumer.session_id and json.loads(print_.record)["price"] == 150.0
    found = sorted((f.check, f.severity, f.symbol) for f in table_rows("data_quality_findings"))
    assert found == [("price_band", "error", "AAPL"), ("size", "warn", "MSFT")]


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
        # The window since the killed consumer's last commit is recorded (Finnhub: reported, no REST source).
        takeover = [g for g in table_rows("stream_gaps") if g.reason == "consumer takeover"]
        assert takeover and takeover[0].resolution == "reported"
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
    samples = {s.name: s for m in metrics.metrics().latency.collect() for s in m.samples
               if s.labels["pipeline"] == PIPELINE}
    assert samples["stockpulse_ingestion_latency_seconds_count"].value >= 100
    newest = max(r.ts for r in table_rows("trades"))
    assert (datetime.now(UTC) - newest).total_seconds() < 30


def test_a_stream_pipeline_cannot_be_run_as_a_batch_chain() -> None:
    from stockpulse.errors import ConfigError
    from stockpulse.pipeline.runs import start_run

    with pytest.raises(ConfigError, match="is a stream"):
        start_run(PIPELINE)


# ------------------------------------------------------------------------------------------ Alpaca


def alpaca_trade_ids(symbol: str) -> list[str]:
    return sorted((r.trade_id for r in table_rows("trades") if r.source == "alpaca" and r.symbol == symbol), key=int)


def test_alpaca_trades_and_minute_bars_stream_in_and_a_drop_is_filled_over_rest(
        stream: Any, enable: Any, clean_stack: Stack) -> None:
    from stockpulse.sim.data import tape_trades

    enable("alpaca_trades")
    running = Running("alpaca_trades")
    wait_until(lambda: running.consumer.result.loaded >= 60, "trades over the Alpaca stream")
    stream.stream("bars")  # the minute's bar so far, for each symbol subscribed to bars
    wait_until(lambda: running.consumer.result.extra_loaded.get("bars", 0) >= 3, "minute bars")
    stream.stream("drop")
    wait_until(lambda: running.consumer.result.connects >= 2, "a reconnect")
    wait_until(lambda: [r for r in table_rows("pipeline_runs") if r.status == "succeeded"], "the gap fill run",
               timeout=60)
    loaded = running.consumer.result.loaded
    wait_until(lambda: running.consumer.result.loaded > loaded + 30, "trades after the reconnect")
    stream.stream("pause")
    time.sleep(0.5)
    running.finish()
    assert running.error is None
    [gap] = table_rows("stream_gaps")
    assert gap.resolution == "backfill queued" and gap.reason.startswith("WebSocket")
    [run] = table_rows("pipeline_runs")
    assert (run.id, run.trigger, run.status) == (gap.backfill_run_id, "gap_fill", "succeeded")
    assert run.records_loaded > 0  # trades only the REST fill brought in
    # Every trade of the tape between the first and the last stored one is there, once: the gap is closed.
    for symbol in ("AAPL", "MSFT", "IBM"):
        rows = [r for r in table_rows("trades") if r.source == "alpaca" and r.symbol == symbol]
        first, last = min(r.ts for r in rows), max(r.ts for r in rows)
        # A trade's time is its tape slot's time plus under 1 ms (and stored to the microsecond).
        tape = tape_trades(symbol, int(first.timestamp()) * 10**9 + first.microsecond * 1000 - 10**6,
                           int(last.timestamp()) * 10**9 + last.microsecond * 1000 + 1000, 20)
        assert alpaca_trade_ids(symbol) == [str(t.slot) for t in tape]
        assert {r.exchange for r in rows} == {"V"} and {r.conditions for r in rows} == {"@"}
    bars = [b for b in table_rows("bars") if b.source == "alpaca"]
    assert {b.symbol for b in bars} == {"AAPL", "MSFT", "IBM"} and {b.interval for b in bars} == {"1m"}
    assert all(b.ts.second == 0 and b.low <= b.open <= b.high for b in bars)


def test_traced_stream_commits_are_traces_of_their_own_and_a_gap_fill_is_a_traced_run(
        stream: Any, enable: Any, clean_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.config import reset_settings
    from stockpulse.observability import tracing
    from stockpulse.sim.otlp import OTLPSink

    enable("alpaca_trades")
    with OTLPSink() as sink:
        env = {"STOCKPULSE_TRACING__ENABLED": "true", "STOCKPULSE_TRACING__ENDPOINT": sink.endpoint,
               "STOCKPULSE_TRACING__STREAM_SAMPLE_RATIO": "1", "OTEL_BSP_SCHEDULE_DELAY": "100"}
        clean_stack.restart_worker(**env)  # runs the gap fill's stages
        for name, value in env.items():  # this process runs the consumer, as a realtime worker would
            monkeypatch.setenv(name, value)
        reset_settings()
        assert tracing.init_tracing("worker")
        try:
            running = Running("alpaca_trades")
            wait_until(lambda: running.consumer.result.loaded >= 60, "trades over the Alpaca stream")
            stream.stream("drop")
            wait_until(lambda: [r for r in table_rows("pipeline_runs") if r.status == "succeeded"],
                       "the gap fill run", timeout=60)
            stream.stream("pause")
            time.sleep(0.5)
            result = running.finish()
        finally:
            tracing.shutdown_tracing()  # flushes this process's spans
        assert running.error is None
        # Every commit is a trace of its own (ratio 1 here), its writes under it; together they loaded it all.
        commits = [s for s in sink.received() if s.name == "stream.commit"]
        assert len(commits) == result.flushes and len({s.trace_id for s in commits}) == len(commits)
        assert all(s.parent_span_id == "" and s.service == "stockpulse-worker" for s in commits)
        assert {s.attributes["stockpulse.session_id"] for s in commits} == {running.consumer.session_id}
        assert {s.attributes["stockpulse.run.trigger"] for s in commits} == {"stream"}
        assert sum(s.attributes["stockpulse.records_loaded"] for s in commits) == result.loaded
        busy = max(commits, key=lambda s: s.attributes["stockpulse.records_loaded"])
        [write] = [s for s in sink.trace(busy.trace_id) if s.name == "db.load"]
        assert write.parent_span_id == busy.span_id and write.attributes["db.collection.name"] == "trades"
        statements = [s.attributes.get("db.statement", "") for s in sink.trace(busy.trace_id)
                      if s.parent_span_id == write.span_id]
        # The lease's fence is written in the same transaction (the ticks themselves go by COPY on PostgreSQL,
        # which the SQLAlchemy instrumentation does not see: db.load's own time covers it).
        assert any(sql.startswith("INSERT INTO stream_fences") for sql in statements), statements
        # The gap fill is a run with a trace: its root in the consumer's process, its stages on the worker.
        [gap] = table_rows("stream_gaps")
        [run] = table_rows("pipeline_runs")
        assert run.id == gap.backfill_run_id and run.trace_id
        stages = {f"run/stockpulse.pipeline.{stage}" for stage in ("fetch", "transform", "load")}
        spans = sink.wait_for(run.trace_id, {"pipeline.run", "provider.request", *stages})
        [root] = [s for s in spans if s.name == "pipeline.run"]
        assert root.attributes["stockpulse.run.trigger"] == "gap_fill" and root.attributes["stockpulse.run_id"] == run.id
        assert all(s.attributes.get("stockpulse.run_id") == run.id for s in spans if s.name in stages)


def test_alpaca_connection_limit_reconnects_and_auth_failure_stops(stream: Any, enable: Any) -> None:
    enable("alpaca_trades")
    running = Running("alpaca_trades")
    wait_until(lambda: running.consumer.result.loaded > 0, "trades")
    stream.stream("error", code=406)  # connection limit exceeded: the server closes; worth a retry
    wait_until(lambda: running.consumer.result.connects >= 2, "a reconnect after error 406")
    stream.stream("reject")  # from now on the simulator answers auth with 402 auth failed
    stream.stream("drop")
    running.thread.join(15)
    assert not running.thread.is_alive()
    assert isinstance(running.error, PermanentError) and "402: auth failed" in str(running.error)
    assert "402" in running.consumer.result.ended


def test_a_symbol_changed_in_config_is_resubscribed_without_a_reconnect(stream: Any, enable: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    enable("alpaca_trades")
    running = Running("alpaca_trades")
    wait_until(lambda: running.consumer.result.loaded > 0, "trades")
    monkeypatch.setenv("STOCKPULSE_PIPELINES__ALPACA_TRADES__SYMBOLS", "[AAPL, NVDA]")
    wait_until(lambda: alpaca_trade_ids("NVDA"), "trades of the symbol added in config")
    changed = datetime.now(UTC)
    time.sleep(1.0)
    running.finish()
    assert running.consumer.result.connects == 1 and running.consumer.symbols == ("AAPL", "NVDA")
    late = [r for r in table_rows("trades") if r.symbol in ("MSFT", "IBM") and r.ts > changed]
    assert not late  # unsubscribed: nothing of the removed symbols after the change


# ---------------------------------------------------------------------------------------- Coinbase


def test_coinbase_matches_stream_without_a_key_and_its_gaps_are_reported(stream: Any, enable: Any) -> None:
    enable("coinbase_trades")
    running = Running("coinbase_trades")
    wait_until(lambda: running.consumer.result.loaded >= 40, "matches")
    stream.stream("drop")
    wait_until(lambda: running.consumer.result.connects >= 2, "a reconnect")
    loaded = running.consumer.result.loaded
    wait_until(lambda: running.consumer.result.loaded > loaded + 10, "matches after the reconnect")
    running.finish()
    rows = [r for r in table_rows("trades") if r.source == "coinbase"]
    assert {r.symbol for r in rows} == {"BTC-USD", "ETH-USD"}
    # last_match after the reconnect repeats a trade already loaded: an upsert, not a second row.
    assert len({(r.symbol, r.trade_id) for r in rows}) == len(rows) >= running.consumer.result.loaded - 2
    assert all(0 < r.size < 1 and r.price > 0 for r in rows)  # "0.04600000" strings became numbers
    [gap] = table_rows("stream_gaps")
    assert gap.resolution == "reported" and gap.backfill_run_id is None  # no REST trades source


def test_silence_while_the_market_is_closed_is_not_a_dead_stream(enable: Any) -> None:
    from stockpulse.streams.consumer import StreamConsumer

    enable("alpaca_trades", calendar="XNYS")
    consumer = StreamConsumer("alpaca_trades", 0)
    assert consumer.silence_is_death(datetime(2026, 12, 2, 17, 0, tzinfo=UTC))  # in session: reconnect
    assert not consumer.silence_is_death(datetime(2026, 11, 26, 17, 0, tzinfo=UTC))  # Thanksgiving: wait
    assert StreamConsumer("coinbase_trades", 0).calendar is None  # crypto never closes
