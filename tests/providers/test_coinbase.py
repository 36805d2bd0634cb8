from __future__ import annotations

from datetime import date

import pytest
import requests

from stockpulse.errors import PermanentError
from tests.providers.helpers import fetch


def test_candles_are_requested_in_windows_of_at_most_300(sim_url: str, sim) -> None:
    start, end = date(2023, 1, 1), date(2024, 12, 31)
    records, client = fetch("coinbase", sim_url, ("BTC-USD",), start, end)
    assert len(records) == (end - start).days + 1  # crypto trades every day
    assert client.requests_made == 3
    assert records[0]["ts"].endswith("T00:00:00+00:00") and records[0]["source"] == "coinbase"


def test_rows_are_time_low_high_open_close_volume_newest_first(sim_url: str, sim) -> None:
    rows = requests.get(f"{sim_url}/products/BTC-USD/candles", params={
        "granularity": 86400, "start": "2024-01-01T00:00:00Z", "end": "2024-01-03T00:00:00Z"}, timeout=5).json()
    assert len(rows) == 3 and rows[0][0] > rows[-1][0]
    t, low, high, open_, close, volume = rows[0]
    assert low <= min(open_, close) <= max(open_, close) <= high and volume > 0


def test_more_than_300_candles_is_rejected_like_coinbase(sim_url: str, sim) -> None:
    response = requests.get(f"{sim_url}/products/BTC-USD/candles", params={
        "granularity": 86400, "start": "2022-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, timeout=5)
    assert response.status_code == 400 and "exceeds 300" in response.json()["message"]


def test_unknown_product_is_permanent(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match="NotFound"):
        fetch("coinbase", sim_url, ("ZZZ-USD",), date(2024, 1, 1), date(2024, 1, 10))


def test_public_rate_limit_is_transient(sim_url: str, sim) -> None:
    from stockpulse.errors import TransientError

    sim.fault("coinbase", "429")
    with pytest.raises(TransientError, match="Public rate limit exceeded") as info:
        fetch("coinbase", sim_url, ("BTC-USD",), date(2024, 1, 1), date(2024, 1, 10))
    assert info.value.retry_after == 1.0
