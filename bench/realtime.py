"""Real-time throughput and latency: the simulator's Finnhub websocket -> a real realtime worker -> PostgreSQL.

    python bench/realtime.py [--rate 5000] [--seconds 60] [--symbols 50] [--database-url URL]

The simulator stamps each trade with its send time (``t``, ms). The consumer runs in a real Celery worker
(threads pool), started by the supervisor task as in production. Prints the ticks/s sent and stored, the
backlog (sent - stored) sampled every second (a backlog that keeps growing means the rate is not
sustained), and end-to-end latency from the trade's time to its row's ``ingested_at`` (stamped in the
flush's transaction, just before commit) at p50/p99/max. Targets (issue #6): 5,000 ticks/s sustained,
p99 < 250 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import prepare, start_worker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000.0, help="ticks per second the simulator sends")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--database-url", default=os.environ.get(
        "STOCKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("STOCKPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9"))
    args = parser.parse_args()

    from stockpulse.sim.server import SimState, serve_in_thread

    state = SimState(seed=1)
    state.stream.frame_size = 50
    server, sim_url = serve_in_thread(state=state)
    symbols = [f"T{i:03d}" for i in range(args.symbols)]
    config = {
        "providers": {"finnhub": {"base_url": sim_url, "api_key": "bench", "options": {"ws_url": server.ws_url}}},
        "symbols": {"bench": symbols},
        "pipelines": {"bench_trades": {"data_type": "trades", "provider": "finnhub", "symbols": "bench",
                                       "options": {"shard_size": max(1, args.symbols)}}},
        "metrics": {"port": 0},
    }
    engine, workdir = prepare(config, args.database_url, args.redis_url)
    from sqlalchemy import text

    worker = start_worker(workdir, "-Q", "realtime", "-P", "threads", "-c", "4")

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM trades")).scalar())

    try:
        from stockpulse.streams.tasks import supervise_streams

        deadline = time.monotonic() + 60
        state.stream.act({"action": "pause"})
        supervise_streams.apply()
        while state.stream.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # subscribed
        state.stream.act({"action": "rate", "ticks_per_s": args.rate})
        state.stream.act({"action": "resume"})
        began, backlog = time.monotonic(), []
        while time.monotonic() - began < args.seconds:
            time.sleep(1.0)
            backlog.append(len(state.stream.sent) - stored())
        state.stream.act({"action": "pause"})
        sent_total, elapsed = len(state.stream.sent), time.monotonic() - began
        drain_deadline = time.monotonic() + 30
        while stored() < sent_total and time.monotonic() < drain_deadline:
            time.sleep(0.2)
        drained = time.monotonic() - began - elapsed
        with engine.connect() as conn:
            p50, p99, worst = conn.execute(text(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP "
                "(ORDER BY ms), max(ms) FROM (SELECT extract(epoch FROM ingested_at - ts) * 1000 AS ms "
                "FROM trades) lat")).one()
        total = stored()
    finally:
        worker.terminate()
        worker.wait(30)
        server.shutdown()

    print(f"sent {sent_total:,} ticks in {elapsed:.1f} s ({sent_total / elapsed:,.0f}/s, target rate {args.rate:,.0f}/s, "
          f"{args.symbols} symbols, one shard)")
    print(f"stored {total:,} ({'all' if total == sent_total else f'{sent_total - total:,} missing'}); "
          f"drained {drained:.2f} s after the stream paused")
    print(f"backlog (sent - stored) per second: first {backlog[:3]}, last {backlog[-3:]}, max {max(backlog):,}")
    print(f"latency trade time -> row stamped in its flush: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms "
          f"(target p99 < 250 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
