"""Helpers of the stream tests: a consumer in a thread, waiting, and what the database holds."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.conftest import table_rows


def stored(source: str = "finnhub") -> list[tuple]:
    return sorted((r.symbol, int(round(r.ts.timestamp() * 1000)), r.price, r.size) for r in table_rows("trades")
                  if r.source == source)


def sent(sim: Any) -> list[tuple]:
    return sorted((s, t, p, v) for s, t, p, v, _c in sim.streamed()["sent"])


def wait_until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


RUNNING: list[Running] = []  # stopped by the ``stream`` fixture, even when a test fails half-way


class Running:
    """A consumer in a thread of this process (the worker-level tests start real workers)."""

    def __init__(self, pipeline: str = "finnhub_trades", shard: int = 0):
        from stockpulse.streams.consumer import StreamConsumer

        self.stop = threading.Event()
        self.consumer = StreamConsumer(pipeline, shard, stop=self.stop)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        RUNNING.append(self)

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
