from __future__ import annotations

from datetime import date

import requests

from stockpulse.sim.data import daily_bars, trading_days
from stockpulse.sim.server import SimState, serve_in_thread

ALPACA_HEADERS = {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}


def test_data_is_deterministic_per_seed_and_independent_of_the_range() -> None:
    today = date(2024, 7, 1)
    whole = daily_bars(3, "AAPL", date(2024, 1, 1), date(2024, 6, 28), today=today)
    part = daily_bars(3, "AAPL", date(2024, 3, 1), date(2024, 3, 29), today=today)
    assert part == [b for b in whole if date(2024, 3, 1) <= b.day <= date(2024, 3, 29)]
    assert daily_bars(4, "AAPL", date(2024, 3, 1), date(2024, 3, 29), today=today) != part
    assert [b.day for b in whole] == trading_days(date(2024, 1, 1), date(2024, 6, 28))
    assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high and b.volume > 0 for b in whole)


def test_no_bar_for_a_session_that_has_not_closed() -> None:
    assert daily_bars(1, "AAPL", date(2024, 7, 1), date(2024, 7, 5), today=date(2024, 7, 3))[-1].day == date(2024, 7, 2)


def test_faults_by_header_query_and_queue(sim_url: str, sim) -> None:
    url = f"{sim_url}/v2/stocks/bars"
    params = {"symbols": "AAPL", "timeframe": "1Day", "start": "2024-01-02", "end": "2024-01-03"}
    by_header = requests.get(url, params=params, headers={**ALPACA_HEADERS, "X-Sim-Fault": "503"}, timeout=5)
    assert by_header.status_code == 503
    by_query = requests.get(url, params={**params, "sim_fault": "html"}, headers=ALPACA_HEADERS, timeout=5)
    assert by_query.status_code == 502 and by_query.text.startswith("<!DOCTYPE html>")
    sim.fault("alpaca", "429", times=2)
    statuses = [requests.get(url, params=params, headers=ALPACA_HEADERS, timeout=5).status_code for _ in range(3)]
    assert statuses == [429, 429, 200]
    assert sim.requests_made("alpaca") == 5


def test_configured_fault_rate_applies_per_provider() -> None:
    server, url = serve_in_thread(state=SimState(seed=1, faults={"coinbase": {"rate": 1.0, "kinds": ["500"]}}))
    try:
        candles = requests.get(f"{url}/products/BTC-USD/candles", params={"granularity": 86400}, timeout=5)
        query = requests.get(f"{url}/query", params={"function": "TIME_SERIES_DAILY", "symbol": "IBM",
                                                      "apikey": "k"}, timeout=5)
        assert candles.status_code == 500 and query.status_code == 200
    finally:
        server.shutdown()


def test_alpha_vantage_soft_errors_are_http_200(sim_url: str, sim) -> None:
    base = {"function": "TIME_SERIES_DAILY", "symbol": "IBM"}
    no_key = requests.get(f"{sim_url}/query", params=base, timeout=5)
    assert no_key.status_code == 200 and "apikey is invalid or missing" in no_key.json()["Error Message"]
    full = requests.get(f"{sim_url}/query", params={**base, "apikey": "k", "outputsize": "full"}, timeout=5)
    assert "premium feature" in full.json()["Information"]
    good = requests.get(f"{sim_url}/query", params={**base, "apikey": "k"}, timeout=5).json()
    assert list(good) == ["Meta Data", "Time Series (Daily)"] and len(good["Time Series (Daily)"]) == 100
    day = next(iter(good["Time Series (Daily)"].values()))
    assert list(day) == ["1. open", "2. high", "3. low", "4. close", "5. volume"]
    assert all(isinstance(v, str) for v in day.values())


def test_unknown_control_requests_are_refused(sim_url: str, sim) -> None:
    assert requests.post(f"{sim_url}/_sim/faults", json={"kind": "gremlins"}, timeout=5).status_code == 400
    assert requests.post(f"{sim_url}/_sim/corrupt", json={"kind": "x", "symbol": "A", "date": "2024-01-02"},
                         timeout=5).status_code == 400
