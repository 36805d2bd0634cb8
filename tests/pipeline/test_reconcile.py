"""Cross-provider reconciliation: a reference pipeline's bars against the served bars, through a real worker."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from tests.conftest import Stack, table_rows

REFERENCE = "polygon_reference_bars"  # in the test config: polygon, options.reference, disabled


def day(d: str) -> datetime:
    return datetime.fromisoformat(d).replace(tzinfo=UTC)


def test_disagreements_beyond_tolerance_are_findings_once(database: str) -> None:
    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import bars, reference_bars
    from stockpulse.pipeline.reconcile import reconcile

    served = [("AAPL", "2026-11-23", 100.0, 1_000_000), ("AAPL", "2026-11-24", 101.0, 1_000_000),
              ("AAPL", "2026-11-25", 102.0, 1_000_000), ("MSFT", "2026-11-24", 400.0, 500_000)]
    seen = [("AAPL", "2026-11-23", 100.2, 1_100_000),  # 0.2% and 9%: within the defaults (0.5%, 25%)
            ("AAPL", "2026-11-24", 103.0, 1_000_000),  # close 2% off
            ("AAPL", "2026-11-25", 102.0, 400_000),  # volume 60% off
            ("IBM", "2026-11-24", 200.0, 10)]  # served by nobody: nothing to compare
    now = datetime.now(UTC)
    with get_engine().begin() as conn:
        conn.execute(bars.insert(), [{"symbol": s, "interval": "1d", "ts": day(d), "open": c, "high": c, "low": c,
                                      "close": c, "volume": v, "source": "alpaca", "ingested_at": now}
                                     for s, d, c, v in served])
        conn.execute(reference_bars.insert(), [{"source": "polygon", "symbol": s, "interval": "1d", "ts": day(d),
                                                "open": c, "high": c, "low": c, "close": c, "volume": v,
                                                "ingested_at": now} for s, d, c, v in seen])
    [result] = reconcile(REFERENCE, now=datetime(2026, 11, 27, tzinfo=UTC))
    assert (result.compared, result.disagreements, result.new_findings) == (3, 2, 2)
    found = sorted((f.check, f.symbol, f.details["ts"][:10], f.details["reason"]) for f in table_rows(
        "data_quality_findings"))
    assert found == [
        ("reconcile_close", "AAPL", "2026-11-24", "polygon close 103 is +1.98% from alpaca's 101 on 2026-11-24"),
        ("reconcile_volume", "AAPL", "2026-11-25", "polygon volume 400000 is 60% apart from alpaca's 1e+06 on "
                                                   "2026-11-25")]
    assert {f.pipeline for f in table_rows("data_quality_findings")} == {REFERENCE}
    again = reconcile(REFERENCE, now=datetime(2026, 11, 27, tzinfo=UTC))
    assert again[0].new_findings == 0 and len(table_rows("data_quality_findings")) == 2
    # Out of the lookback window: not compared.
    assert reconcile(REFERENCE, now=datetime(2026, 12, 27, tzinfo=UTC))[0].compared == 0


def test_only_reference_bars_pipelines_are_reconciled() -> None:
    from stockpulse.errors import ConfigError
    from stockpulse.pipeline.reconcile import reconcile

    with pytest.raises(ConfigError, match="'daily_bars' is not a reference bars pipeline"):
        reconcile("daily_bars")


@pytest.mark.integration
def test_a_reference_pipeline_loads_apart_and_the_task_finds_the_disagreement(clean_stack: Stack, sim: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.celery_app import app
    from stockpulse.config import reset_settings

    enabled = {"STOCKPULSE_PIPELINES__POLYGON_REFERENCE_BARS__ENABLED": "true"}
    clean_stack.restart_worker(**enabled)
    for name, value in enabled.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    sim.corrupt("AAPL", "2024-03-12", "spike", provider="polygon")
    window = {"symbols": ["AAPL"], "start": date(2024, 3, 1), "end": date(2024, 3, 29)}
    assert clean_stack.run("daily_bars", **window).status == "succeeded"
    reference = clean_stack.run(REFERENCE, **window)
    assert reference.status == "succeeded", reference
    # The reference provider's bars are kept apart: the served bars stay Alpaca's.
    assert {b.source for b in table_rows("bars")} == {"alpaca"}
    sessions = len(table_rows("bars"))
    assert sessions > 15 and len(table_rows("reference_bars")) == sessions

    results = app.send_task("stockpulse.maintenance.reconcile_bars", kwargs={"days": 3650}).get(timeout=60)
    assert results == [{"pipeline": REFERENCE, "compared": sessions, "disagreements": 1, "new_findings": 1}]
    [finding] = [f for f in table_rows("data_quality_findings") if f.check.startswith("reconcile")]
    assert finding.check == "reconcile_close" and finding.details["ts"].startswith("2024-03-12")
    assert "+900.00% from alpaca's" in finding.details["reason"]
