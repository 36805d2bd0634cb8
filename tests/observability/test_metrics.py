"""Pipeline metrics from a real prefork worker: every pool process's samples add up on one endpoint."""

from __future__ import annotations

import time
from datetime import date

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from stockpulse.standalone import free_port
from tests.conftest import Stack, weekdays

pytestmark = pytest.mark.integration
START, END = date(2024, 1, 1), date(2024, 3, 29)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, /, **labels: str) -> float:
    return sum(v for (n, lbls), v in samples.items()
               if n == name and all(dict(lbls).get(k) == v2 for k, v2 in labels.items()))


def test_counters_from_a_prefork_pool_of_two_sum_correctly(clean_stack: Stack, sim) -> None:
    port = free_port()
    clean_stack.restart_worker(STOCKPULSE_METRICS__PORT=str(port))
    sim.fault("alpaca", "503", times=1)  # one retry, counted once
    runs = [clean_stack.run("bulk_bars", start=START, end=END),  # 2 batches of 4 symbols
            clean_stack.run("daily_bars", start=START, end=END),  # 2 batches (3 symbols, 2 per batch)
            clean_stack.run("crypto_daily_bars", start=START, end=END)]  # 1 batch
    assert [r.status for r in runs] == ["succeeded"] * 3
    loaded = sum(r.records_loaded for r in runs)
    # A stage's own metrics are recorded just after the commit that can end its run: let the last one land.
    deadline = time.monotonic() + 10
    samples = scrape(port)
    while total(samples, "stockpulse_stage_duration_seconds_count", stage="load") < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
        samples = scrape(port)
    assert total(samples, "stockpulse_stage_duration_seconds_count", stage="load", outcome="success") == 5
    assert total(samples, "stockpulse_stage_duration_seconds_count", stage="fetch", outcome="success") == 5
    assert total(samples, "stockpulse_records_total", stage="load", outcome="loaded") == loaded
    assert total(samples, "stockpulse_records_total", stage="transform", outcome="fetched") == loaded
    assert total(samples, "stockpulse_records_total", pipeline="bulk_bars", stage="load") == 8 * len(weekdays(START, END))
    assert total(samples, "stockpulse_retries_total", provider="alpaca", stage="fetch") == 1
    assert total(samples, "stockpulse_runs_total", status="succeeded") == 3
    assert total(samples, "stockpulse_last_success_timestamp_seconds", pipeline="daily_bars") > 0
    assert not any("symbol" in dict(lbls) or "run_id" in dict(lbls) for _, lbls in samples)  # bounded labels
