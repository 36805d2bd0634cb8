"""Trades: the tick quality checks on constructed tapes, with and without stored history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stockpulse.config import PipelineSettings
from stockpulse.datatypes.trades import TRADES
from stockpulse.quality import QualityResult, run_checks
from stockpulse.universes import Universe

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
KEY = TRADES.key_of or (lambda r: tuple(r[k] for k in TRADES.key))


def pipe(**quality: Any) -> PipelineSettings:
    return PipelineSettings("t", "trades", "coinbase", Universe("u", tickers=("BTC-USD",)),
                            options={"quality": quality})


def tick(n: int, price: float, *, size: float = 0.5, at: datetime | None = None) -> dict[str, Any]:
    return {"source": "coinbase", "symbol": "BTC-USD", "ts": at or NOW - timedelta(seconds=60 - n),
            "trade_id": str(n), "price": price, "size": size, "conditions": None, "exchange": None}


def check(records: list[dict[str, Any]], p: PipelineSettings | None = None, conn: Any = None,
          **kw: Any) -> QualityResult:
    return run_checks(TRADES.quality_checks, records, p or pipe(), conn, KEY, first_record_no=0, now=NOW, **kw)


def by_check(result: QualityResult) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for f in result.findings:
        out.setdefault(f.check, []).append(f.index)
    return out


def test_a_bad_print_is_flagged_and_does_not_move_the_band() -> None:
    prices = [100.0, 100.2, 99.9, 100.1, 100.0, 150.0, 100.1, 100.2, 99.8]
    result = check([tick(i, p) for i, p in enumerate(prices)])
    assert by_check(result) == {"price_band": [5]}
    [finding] = result.findings
    assert finding.details["reason"] == "price 150 is +50.0% from the median 100 of the last 5 trades"


def test_a_real_jump_becomes_the_new_level_and_a_halt_starts_afresh() -> None:
    jump = [100.0, 100.1, 99.9, 100.0, 100.2] + [120.0, 120.1, 120.2, 119.9, 120.0]
    assert by_check(check([tick(i, p) for i, p in enumerate(jump)])) == {"price_band": [5, 6, 7]}
    # 20 minutes without a trade (max_gap_s 900): the reopening price is not judged against the old level
    halted = [tick(i, 100.0, at=NOW - timedelta(hours=1, seconds=-i)) for i in range(5)] + [tick(9, 130.0)]
    assert by_check(check(halted)) == {}


def test_the_band_carries_across_a_stream_s_batches_in_its_state() -> None:
    state: dict[str, Any] = {}
    assert by_check(check([tick(i, 100.0) for i in range(5)], state=state)) == {}
    assert by_check(check([tick(10, 100.1), tick(11, 80.0)], state=state)) == {"price_band": [1]}


def test_stored_trades_are_the_band_of_a_symbol_seen_the_first_time(database: str) -> None:
    from stockpulse.db.engine import get_engine
    from stockpulse.pipeline.loader import upsert

    rows = [tuple(TRADES.from_row(r)) for r in TRADES.rows([tick(i, 200.0 + i / 10) for i in range(5)])]
    with get_engine().begin() as conn:
        upsert(conn, TRADES.table, TRADES.columns, TRADES.key, rows)
    with get_engine().connect() as conn:
        result = check([tick(30, 200.3), tick(31, 260.0)], conn=conn)
    assert by_check(result) == {"price_band": [1]}
    assert result.findings[0].details["reference"] == 200.3  # 200.1..200.4 stored, then 200.3


def test_times_in_the_future_or_too_old_and_zero_sizes() -> None:
    records = [tick(0, 100.0, at=NOW + timedelta(minutes=5)), tick(1, 100.0, at=NOW - timedelta(hours=2)),
               tick(2, 100.0, size=0.0), tick(3, 100.0, at=NOW + timedelta(seconds=30))]  # 30s: clock skew, fine
    result = check(records, pipe(price_band={"severity": "off"}))
    assert by_check(result) == {"trade_time": [0, 1], "size": [2]}
    reasons = [f.details["reason"] for f in result.findings]
    assert reasons[0].endswith("is 300s in the future")
    assert reasons[1].endswith("is more than 3600s old on a live stream")
    assert reasons[2] == "size 0 is not positive"
    # A REST run (a gap fill) asks for a window in the past: only trades before it are suspect.
    window = (NOW - timedelta(hours=3), NOW - timedelta(hours=1))
    result = check([tick(1, 100.0, at=NOW - timedelta(hours=2)), tick(2, 100.0, at=NOW - timedelta(hours=4))],
                   pipe(price_band={"severity": "off"}), requested=window)
    assert by_check(result) == {"trade_time": [1]}


def test_error_severity_quarantines_the_print_with_the_reason() -> None:
    prices = [100.0, 100.2, 99.9, 100.1, 100.0, 150.0]
    result = check([tick(i, p) for i, p in enumerate(prices)], pipe(price_band={"severity": "error", "band_pct": 20}))
    assert [r.record_no for r in result.rejected] == [5] and len(result.valid) == 5
    assert result.rejected[0].reason.startswith("quality check price_band: price 150 is +50.0%")
