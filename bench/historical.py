"""Historical bars throughput: the real chain (simulator -> worker -> PostgreSQL) against a raw binary COPY.

    python bench/historical.py [--symbols 200] [--bars 1000] [--batch-size 10] [--database-url URL]
    python bench/historical.py --tracing-ratios 1.0,0.01   # also: the cost of tracing at each sample ratio

Prints rows/s for the whole chain, for the load stage alone (rows / summed load-stage time, i.e. one
process's load throughput, comparable with one COPY), for a raw binary COPY of the same rows into an empty
keyed table, their ratios, a re-run of the same backfill (all rows unchanged), and the worker's peak RSS.
Targets (issue #2): load >= 0.4x raw COPY, chain >= 0.2x raw COPY, re-run >= first run,
peak RSS < 400 MB at 1,000 x 1,000.

With ``--tracing-ratios``, the same backfill is then loaded afresh (table emptied) by a new worker with
tracing off and with tracing on at each ratio, exporting over OTLP/HTTP to a loopback receiver in this
process, alternating for ``--tracing-rounds`` rounds; it prints each one's median rows/s, worker CPU
time and peak RSS of the largest worker process, their cost against tracing off, and the spans received
(issue #9).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import prepare, start_worker  # noqa: E402


def weekdays_back(end: date, count: int) -> date:
    day, seen = end, 0
    while True:
        if day.weekday() < 5:
            seen += 1
            if seen == count:
                return day
        day -= timedelta(days=1)


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_total = self.peak_single = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs]
                self.peak_total = max(self.peak_total, sum(rss))
                self.peak_single = max(self.peak_single, max(rss))
            except psutil.Error:
                pass
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--bars", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--database-url", default=os.environ.get(
        "STOCKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("STOCKPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9"))
    parser.add_argument("--skip-rerun", action="store_true")
    parser.add_argument("--tracing-ratios", default="", help="comma-separated sample ratios to compare with "
                        "tracing off, e.g. 1.0,0.01")
    parser.add_argument("--tracing-rounds", type=int, default=5)
    args = parser.parse_args()

    from stockpulse.sim.server import SimState, serve_in_thread

    end = date(2024, 12, 31)
    start = weekdays_back(end, args.bars)
    symbols = [f"B{i:04d}" for i in range(args.symbols)]
    state = SimState(seed=1, today=end + timedelta(days=1))
    _server, sim_url = serve_in_thread(state=state)
    # The simulator generates each symbol's price history on first use; that is the provider's cost, not
    # the pipeline's, so it is paid before the clock starts.
    from stockpulse.sim.data import daily_bars
    from stockpulse.sim.server import _alpaca_bar

    for symbol in symbols:
        for bar in daily_bars(state.seed, symbol, start, end, today=state.today):
            _alpaca_bar(bar)  # rendered once, as a real provider serves from its store
    config = {
        # The provider's quota is not what is measured here, so it is lifted.
        "providers": {"alpaca": {"base_url": sim_url, "api_key": "bench", "api_secret": "bench", "timeout_s": 120,
                                 "rate_limit": "100000/second", "options": {"page_limit": 10000}}},
        "symbols": {"bench": symbols},
        "pipelines": {"bench_bars": {"data_type": "bars", "provider": "alpaca", "symbols": "bench",
                                     "batch_size": args.batch_size}},
    }
    engine, workdir = prepare(config, args.database_url, args.redis_url)
    worker = start_worker(workdir, "-Q", "historical", "-c", str(args.concurrency))
    from sqlalchemy import func, select

    from stockpulse.db.engine import normalise_url
    from stockpulse.db.models import bars, pipeline_run_batches

    sampler = RssSampler(worker.pid)
    sampler.start()

    from stockpulse.pipeline.runs import FINAL, get_run, start_run

    def timed_run() -> tuple[float, object, dict[str, float]]:
        began = time.perf_counter()
        run_id = start_run("bench_bars", trigger="backfill", start=start, end=end)
        while (run := get_run(run_id)).status not in FINAL:
            time.sleep(0.05)
        wall = time.perf_counter() - began
        t = pipeline_run_batches.c
        with engine.connect() as conn:
            batches = conn.execute(select(t.fetch_started_at, t.fetch_finished_at, t.transform_started_at,
                                          t.transform_finished_at, t.load_started_at, t.load_finished_at)
                                   .where(t.run_id == run_id)).all()
        # Summed busy seconds per stage (across batches and worker processes): where the chain's time goes.
        busy = {stage: sum((getattr(b, f"{stage}_finished_at") - getattr(b, f"{stage}_started_at")).total_seconds()
                           for b in batches) for stage in ("fetch", "transform", "load")}
        return wall, run, busy

    try:
        wall1, run1, busy1 = timed_run()
        if run1.status != "succeeded":
            print(f"run failed: {run1.error_message}\n{(workdir / 'worker.log').read_text()[-3000:]}")
            return 1
        rows = run1.records_loaded
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(bars)).scalar() == rows == args.symbols * args.bars
        rerun = None if args.skip_rerun else timed_run()
    finally:
        sampler.stop_event.set()
        worker.terminate()
        worker.wait(30)

    # Raw binary COPY of the same rows into an empty table with the same key.
    import psycopg

    with engine.connect() as conn:
        data = conn.execute(select(bars.c.symbol, bars.c.interval, bars.c.ts, bars.c.open, bars.c.high, bars.c.low,
                                   bars.c.close, bars.c.volume, bars.c.source, bars.c.ingested_at)).all()
    dsn = normalise_url(args.database_url).replace("postgresql+psycopg://", "postgresql://")
    copy_times = []
    with psycopg.connect(dsn) as pg:
        for _ in range(3):  # the median of three: one COPY on a busy 2-core machine varies by +-25%
            pg.execute("DROP TABLE IF EXISTS bench_raw_bars")
            pg.execute("CREATE TABLE bench_raw_bars (LIKE bars INCLUDING ALL)")
            pg.commit()
            began = time.perf_counter()
            with pg.cursor() as cur, cur.copy("COPY bench_raw_bars FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "timestamptz", "float8", "float8", "float8", "float8", "float8",
                                "text", "timestamptz"])
                for row in data:
                    copy.write_row(row)
            pg.commit()
            copy_times.append(time.perf_counter() - began)
        pg.execute("DROP TABLE bench_raw_bars")
        pg.commit()
    raw_s = sorted(copy_times)[1]

    raw_rate, chain_rate, load_rate = rows / raw_s, rows / wall1, rows / busy1["load"]
    print(f"rows: {rows:,} ({args.symbols} symbols x {args.bars} daily bars), batch size {args.batch_size}, "
          f"worker concurrency {args.concurrency}")
    print(f"raw binary COPY:          {raw_rate:>10,.0f} rows/s ({raw_s:.2f} s, median of 3: "
          f"{', '.join(f'{rows / t:,.0f}' for t in copy_times)})")
    print(f"whole chain (first run):  {chain_rate:>10,.0f} rows/s ({wall1:.2f} s)   ratio {chain_rate / raw_rate:.2f} x COPY "
          f"(target >= 0.2)")
    print(f"load stage alone:         {load_rate:>10,.0f} rows/s ({busy1['load']:.2f} s summed) ratio {load_rate / raw_rate:.2f} x COPY "
          f"(target >= 0.4)")
    if rerun:
        wall2, run2, busy2 = rerun
        print(f"whole chain (re-run):     {rows / wall2:>10,.0f} rows/s ({wall2:.2f} s)   {wall1 / wall2:.2f} x the first run "
              f"(target >= 1.0); load stage {rows / busy2['load']:,.0f} rows/s; status {run2.status}")
    print("stage busy time (summed over batches, first run): "
          + ", ".join(f"{stage} {secs:.2f} s ({rows / secs:,.0f} rows/s)" for stage, secs in busy1.items())
          + f"; wall {wall1:.2f} s with {args.concurrency} worker processes")
    print(f"worker peak RSS:          {sampler.peak_total / 2**20:.0f} MB total (main + children), "
          f"{sampler.peak_single / 2**20:.0f} MB largest process (target < 400 MB)")
    if args.tracing_ratios:
        return tracing_cost(args, engine, workdir, timed_run, rows,
                            [float(r) for r in args.tracing_ratios.split(",") if r.strip()])
    return 0


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            times = proc.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def tracing_cost(args: argparse.Namespace, engine: object, workdir: Path, timed_run: object, rows: int,
                 ratios: list[float]) -> int:
    """The same fresh load with tracing off, then on at each ratio, alternating for ``--tracing-rounds``
    rounds; the median wall time and the median worker CPU time (user + system, steadier than wall time on
    a shared 2-core machine) of each."""
    from statistics import median

    from sqlalchemy import delete

    from stockpulse.config import reset_settings
    from stockpulse.db.models import bars, watermarks
    from stockpulse.observability import tracing
    from stockpulse.sim.otlp import OTLPSink

    names = ("STOCKPULSE_TRACING__ENABLED", "STOCKPULSE_TRACING__ENDPOINT", "STOCKPULSE_TRACING__SAMPLE_RATIO",
             "OTEL_BSP_SCHEDULE_DELAY")
    walls: dict[float | None, list[float]] = {}
    cpus: dict[float | None, list[float]] = {}
    spans: dict[float | None, int] = {}
    sampled: dict[float | None, int] = {}
    peaks: dict[float | None, list[int]] = {}  # peak RSS of the worker's largest process
    with OTLPSink() as sink:
        for _round in range(args.tracing_rounds):
            for ratio in (None, *ratios):
                for name in names:
                    os.environ.pop(name, None)
                if ratio is not None:
                    os.environ.update({"STOCKPULSE_TRACING__ENABLED": "true", "STOCKPULSE_TRACING__ENDPOINT": sink.endpoint,
                                       "STOCKPULSE_TRACING__SAMPLE_RATIO": str(ratio), "OTEL_BSP_SCHEDULE_DELAY": "500"})
                reset_settings()
                tracing.init_tracing("cli")
                with engine.begin() as conn:  # type: ignore[attr-defined]
                    conn.execute(delete(bars))
                    conn.execute(delete(watermarks))
                worker = start_worker(workdir, "-Q", "historical", "-c", str(args.concurrency))
                cpu_before = tree_cpu_s(worker.pid)
                sampler = RssSampler(worker.pid)
                sampler.start()
                try:
                    wall, run, _busy = timed_run()  # type: ignore[operator]
                    time.sleep(1.0)  # the worker's last batch of spans goes out (its CPU counts)
                    cpus.setdefault(ratio, []).append(tree_cpu_s(worker.pid) - cpu_before)
                    peaks.setdefault(ratio, []).append(sampler.peak_single)
                finally:
                    sampler.stop_event.set()
                    tracing.shutdown_tracing()
                    worker.terminate()
                    worker.wait(30)
                if run.status != "succeeded":
                    print(f"run failed: {run.error_message}")
                    return 1
                walls.setdefault(ratio, []).append(wall)
                if run.trace_id:  # the run was sampled: its trace, as the receiver got it
                    sampled[ratio] = sampled.get(ratio, 0) + 1
                    spans[ratio] = len(sink.trace(run.trace_id))
    for name in names:
        os.environ.pop(name, None)
    off_wall, off_cpu, off_rss = median(walls[None]), median(cpus[None]), median(peaks[None]) / 2**20
    print(f"tracing off:              {rows / off_wall:>10,.0f} rows/s (median of {args.tracing_rounds} fresh loads, "
          f"{off_wall:.2f} s); worker CPU {off_cpu:.2f} s; peak RSS of a worker process {off_rss:.0f} MB")
    for ratio in ratios:
        wall, cpu, rss = median(walls[ratio]), median(cpus[ratio]), median(peaks[ratio]) / 2**20
        print(f"tracing on, ratio {ratio:<6g}: {rows / wall:>10,.0f} rows/s ({wall:.2f} s): throughput cost "
              f"{1 - off_wall / wall:+.1%}; worker CPU {cpu:.2f} s ({cpu / off_cpu - 1:+.1%}); "
              f"peak RSS {rss:.0f} MB ({rss - off_rss:+.0f} MB); "
              f"{sampled.get(ratio, 0)} of {args.tracing_rounds} runs traced"
              + (f", {spans[ratio]} spans in a traced run's trace" if ratio in spans else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
