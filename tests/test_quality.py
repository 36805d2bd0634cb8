"""Data-quality checks: the bars checks on constructed series, configuration per pipeline, and the whole
path through a real worker (finding stored and counted, warn loads, error quarantines)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from stockpulse.config import PipelineSettings
from stockpulse.datatypes.bars import BARS
from stockpulse.errors import ConfigError
from stockpulse.quality import configured, robust_scale, robust_z, run_checks
from stockpulse.universes import Universe
from tests.conftest import ROOT, SimControl, Stack, table_rows

KEY = BARS.key_of or (lambda r: (r["symbol"], r["interval"], r["ts"]))


def pipe(**quality: Any) -> PipelineSettings:
    # history 0: the checks look at the batch alone (no database in these tests)
    options = {"quality": {name: {"history": 0} for name in ("price_spike", "volume_spike", "stale_close")}}
    for name, override in quality.items():
        options["quality"][name] = {**options["quality"].get(name, {}), **override}
    return PipelineSettings("p", "bars", "alpaca", Universe("u", tickers=("AAPL",)), options=options)


def walk(days: int = 60, start: date = date(2024, 1, 2)) -> list[dict[str, Any]]:
    """A calm random-looking walk over weekdays (±0.4..1.1% a day) with steady volume."""
    out, close, day = [], 100.0, start
    while len(out) < days:
        if day.weekday() < 5:
            close *= 1 + (((len(out) * 7919) % 15) - 7) / 1000
            out.append({"symbol": "AAPL", "interval": "1d", "ts": datetime.combine(day, datetime.min.time(), UTC),
                        "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
                        "volume": 1_000_000 + (len(out) % 5) * 10_000, "source": "alpaca"})
        day += timedelta(days=1)
    return out


def findings(records: list[dict[str, Any]], p: PipelineSettings | None = None) -> dict[str, list[Any]]:
    result = run_checks(BARS.quality_checks, records, p or pipe(), None, KEY, first_record_no=1000)
    out: dict[str, list[Any]] = {}
    for f in result.findings:
        out.setdefault(f.check, []).append(f)
    return out


def test_robust_z() -> None:
    assert robust_z(10, robust_scale([1, 2, 3, 4, 5])) == pytest.approx(0.6745 * 7 / 1)
    assert robust_z(1, robust_scale([1, 1, 1])) is None


def test_a_calm_series_has_no_findings_but_holidays() -> None:
    found = findings(walk())
    # The walk is weekdays only: MLK day (Jan 15) and Presidents' Day (Feb 19) are not XNYS sessions.
    assert set(found) == {"outside_session"}
    assert sorted(f.record_key.split("|")[2][:10] for f in found["outside_session"]) == ["2024-01-15", "2024-02-19"]


def test_a_price_spike_is_found_once_not_the_bar_after_it() -> None:
    bars = walk()
    bars[40] = {**bars[40], "close": bars[40]["close"] * 10, "high": bars[40]["high"] * 10,
                "open": bars[40]["open"] * 10, "low": bars[40]["low"] * 10}
    [spike] = findings(bars)["price_spike"]
    assert spike.index == 40 and spike.severity == "warn" and spike.details["z"] > 10
    assert spike.details["reason"].startswith("close 1017.78 is +898.0% from the previous 101.982")


def test_volume_spike_and_stale_feed() -> None:
    bars = walk()
    bars[30] = {**bars[30], "volume": bars[30]["volume"] * 100}
    for i in range(50, 56):
        bars[i] = {**bars[i], "close": bars[49]["close"]}
    found = findings(bars)
    assert [f.index for f in found["volume_spike"]] == [30]
    # bars 49..55 share a close: the 5th in a row (index 53) and those after it are flagged
    assert [f.index for f in found["stale_close"]] == [53, 54, 55]
    assert found["stale_close"][0].details["reason"].endswith("unchanged for 5 bars")


def test_out_of_order_and_severity_error_quarantines() -> None:
    bars = walk(30)
    bars[10], bars[11] = bars[11], bars[10]
    p = pipe(out_of_order={"severity": "error"}, outside_session={"severity": "off"})
    result = run_checks(BARS.quality_checks, bars, p, None, KEY, first_record_no=1000)
    assert [r.record_no for r in result.rejected] == [1011]
    assert result.rejected[0].reason.startswith("quality check out_of_order: ")
    assert len(result.valid) == 29 and not any(f.check == "outside_session" for f in result.findings)


def test_misconfigured_checks_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown check 'price_spikes'"):
        configured(BARS.quality_checks, pipe(price_spikes={"severity": "warn"}))
    with pytest.raises(ConfigError, match=r"price_spike\.severity: 'loud' is not one of error, warn, off"):
        configured(BARS.quality_checks, pipe(price_spike={"severity": "loud"}))


@pytest.mark.integration
def test_findings_through_a_real_worker(clean_stack: Stack, sim: SimControl) -> None:
    from tests.observability.test_metrics import scrape, total
    from tests.observability.test_prometheus import free_port

    # Warn (default): the spiked bar loads and the finding is stored.
    sim.corrupt("AAPL", "2024-03-12", "spike", provider="alpaca")
    sim.corrupt("AAPL", "2024-03-05", "volume_spike", provider="alpaca")
    run = clean_stack.run("daily_bars", symbols=["AAPL"], start=date(2024, 1, 2), end=date(2024, 3, 29))
    assert run.status == "succeeded" and run.records_rejected == 0
    found = {(f.check, f.record_key.split("|")[2][:10], f.severity) for f in table_rows("data_quality_findings")}
    assert ("price_spike", "2024-03-12", "warn") in found and ("volume_spike", "2024-03-05", "warn") in found
    assert {c for c, _, _ in found} <= {"price_spike", "volume_spike", "outside_session"}

    # Error for this pipeline: the spike is quarantined with the check's reason; the rest loads. The bars
    # stored by the first run are now its history.
    port = free_port()
    clean_stack.restart_worker(STOCKPULSE_PIPELINES__DAILY_BARS__OPTIONS__QUALITY="{price_spike: {severity: error}}",
                               STOCKPULSE_METRICS__PORT=str(port))
    again = clean_stack.run("daily_bars", symbols=["AAPL"], start=date(2024, 3, 1), end=date(2024, 3, 29))
    assert again.status == "partial" and again.records_rejected == 1
    [quarantined] = [q for q in table_rows("quarantine") if q.run_id == again.id]
    assert quarantined.reason.startswith("quality check price_spike: close ")
    assert total(scrape(port), "stockpulse_quality_findings_total", pipeline="daily_bars", check="price_spike",
                 severity="error") == 1
    cli = subprocess.run([sys.executable, "-m", "stockpulse.cli", "quality", "--pipeline", "daily_bars",
                          "--severity", "error", "--json"], cwd=ROOT, env=dict(os.environ), capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert '"check": "price_spike"' in cli.stdout and again.id in cli.stdout
