"""The Celery event exporter as a real process, fed by a real worker's events through the real broker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import requests

from stockpulse.standalone import free_port
from tests.conftest import ROOT, Stack
from tests.observability.test_metrics import scrape, total

pytestmark = pytest.mark.integration
START, END = date(2024, 1, 1), date(2024, 1, 31)
LOAD, FETCH, TRANSFORM = "stockpulse.pipeline.load", "stockpulse.pipeline.fetch", "stockpulse.pipeline.transform"


class Exporter:
    def __init__(self, port: int, process: subprocess.Popen, log_path: Path):
        self.port, self.process, self.log_path = port, process, log_path

    def samples(self) -> dict:
        return scrape(self.port)

    def wait_for(self, check: Callable[[dict], bool], what: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            samples = self.samples()
            if check(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"exporter never showed {what}; last scrape:\n"
                                     + "\n".join(f"{k} {v}" for k, v in sorted(samples.items())
                                                 if k[0].startswith(("celery_", "stockpulse_"))))
            time.sleep(0.2)


def start_exporter(tmp_path: Path, **settings: str) -> Exporter:
    port = free_port()
    env = dict(os.environ, **{f"STOCKPULSE_EXPORTER__{k.upper()}": v for k, v in settings.items()})
    log_path = tmp_path / "exporter.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "stockpulse.cli", "exporter", "--port", str(port),
                                    "--address", "127.0.0.1"], cwd=ROOT, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exporter exited: {log_path.read_text()}")
        try:
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            return Exporter(port, process, log_path)
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"exporter did not answer: {log_path.read_text()}")


@pytest.fixture()
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    exp = start_exporter(tmp_path, worker_timeout_s="4", status_interval_s="0", inspect_interval_s="2")
    yield exp
    exp.process.send_signal(signal.SIGTERM)
    try:
        exp.process.wait(10)
    except subprocess.TimeoutExpired:
        exp.process.kill()
        raise AssertionError("exporter did not stop on SIGTERM") from None


def test_task_events_queues_workers_and_health_gauges(clean_stack: Stack, sim, exporter: Exporter,
                                                      redis_client) -> None:
    worker = clean_stack.restart_worker(queues="historical,maintenance")
    node = f"test-{clean_stack.backend}-custom@{socket.gethostname()}"
    exporter.wait_for(lambda s: total(s, "celery_worker_up", hostname=node) == 1, "the worker up")

    sim.fault("alpaca", "503", times=1)  # one fetch retried
    sim.corrupt("MSFT", "2024-01-10", "negative_volume")  # one record quarantined
    ok = clean_stack.run("daily_bars", start=START, end=END)  # 2 batches
    assert ok.status == "partial" and ok.records_rejected == 1
    sim.fault("alpaca", "malformed", times=2)  # both batches of the next run fail for good
    bad = clean_stack.run("daily_bars", start=date(2024, 2, 1), end=date(2024, 2, 29))
    assert bad.status == "failed"

    samples = exporter.wait_for(
        lambda s: total(s, "celery_task_succeeded_total", name=LOAD) == 2
        and total(s, "celery_task_failed_total", name=FETCH) == 2, "2 loads succeeded and 2 fetches failed")
    assert total(samples, "celery_task_succeeded_total", name=LOAD, hostname=node, queue_name="historical") == 2
    assert total(samples, "celery_task_received_total", name=LOAD, queue_name="historical") == 2
    assert total(samples, "celery_task_started_total", name=TRANSFORM) == 2
    assert total(samples, "celery_task_sent_total", name=TRANSFORM, queue_name="historical") == 2
    assert total(samples, "celery_task_failed_total", name=FETCH, exception="PermanentError") == 2
    assert total(samples, "celery_task_retried_total", name=FETCH) == 1
    assert total(samples, "celery_task_runtime_count", name=LOAD) == 2
    assert total(samples, "celery_task_rejected_total") == total(samples, "celery_task_revoked_total") == 0

    # Priority sub-queues: three messages waiting on a queue nobody consumes, two of them with a priority.
    from stockpulse import app

    for priority in (0, 3, 9):
        app.send_task("stockpulse.pipeline.run", kwargs={"pipeline": "daily_bars"}, queue="news", priority=priority)
    try:
        assert redis_client.llen("news") == 1  # what LLEN of the queue name alone would report
        samples = exporter.wait_for(lambda s: total(s, "celery_queue_length", queue_name="news") == 3,
                                    "3 messages waiting on news")
    finally:
        for key in redis_client.scan_iter("news*"):
            redis_client.delete(key)
    assert total(samples, "celery_active_worker_count", queue_name="historical") == 1
    assert total(samples, "celery_active_worker_count", queue_name="news") == 0

    # The system gauges, one series per pipeline / data type, computed from the database and Redis.
    newest = datetime(END.year, END.month, END.day, tzinfo=UTC).timestamp()
    assert total(samples, "stockpulse_newest_record_timestamp_seconds", pipeline="daily_bars") == newest
    freshness = total(samples, "stockpulse_data_freshness_seconds", data_type="bars")
    assert abs(freshness - (time.time() - newest)) < 60
    assert total(samples, "stockpulse_quarantine_records", pipeline="daily_bars") == 1
    assert total(samples, "stockpulse_dlq_depth") == 2
    assert total(samples, "stockpulse_pipeline_last_run_status", pipeline="daily_bars", status="failed") == 1
    assert total(samples, "stockpulse_circuit_breaker_state", provider="alpaca") == 0
    assert total(samples, "stockpulse_redis_connected_clients") >= 1
    assert total(samples, "stockpulse_status_source_up", source="database") == 1

    # SIGKILL says no goodbye: the worker reads as down once it has been silent for worker_timeout_s (4 s).
    killed_at = time.monotonic()
    worker.kill(signal.SIGKILL)
    exporter.wait_for(lambda s: total(s, "celery_worker_up", hostname=node) == 0, "the killed worker down")
    assert time.monotonic() - killed_at < 4 + 3
    samples = exporter.samples()
    assert total(samples, "celery_active_worker_count", queue_name="historical") == 0
    assert total(samples, "celery_worker_tasks_active", hostname=node) == 0
