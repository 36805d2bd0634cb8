from __future__ import annotations

from datetime import date

import pytest
import requests

from stockpulse.errors import PermanentError, TransientError
from stockpulse.sim.data import trading_days
from tests.providers.helpers import fetch

START, END = date(2024, 1, 1), date(2024, 3, 29)


def test_multi_symbol_bars_follow_next_page_token(sim_url: str, sim) -> None:
    records, client = fetch("alpaca", sim_url, ("AAPL", "MSFT"), START, END, options={"page_limit": 50})
    days = trading_days(START, END)
    assert len(records) == 2 * len(days)
    assert client.requests_made == -(-2 * len(days) // 50)  # limit counts bars across symbols
    first = records[0]
    assert first["symbol"] == "AAPL" and first["source"] == "alpaca" and first["interval"] == "1d"
    # Stamped at New York midnight in UTC by Alpaca; stored as the session date at 00:00 UTC.
    assert first["ts"] == "2024-01-01T00:00:00+00:00"
    assert {r["symbol"] for r in records} == {"AAPL", "MSFT"}


def test_wire_format_matches_alpaca(sim_url: str, sim) -> None:
    body = requests.get(f"{sim_url}/v2/stocks/bars", params={
        "symbols": "AAPL", "timeframe": "1Day", "start": "2024-07-01T00:00:00Z", "end": "2024-07-02T23:59:59Z",
        "limit": 1}, headers={"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}, timeout=5).json()
    assert set(body) == {"bars", "next_page_token"}
    bar = body["bars"]["AAPL"][0]
    assert set(bar) == {"t", "o", "h", "l", "c", "v", "n", "vw"}
    assert bar["t"] == "2024-07-01T04:00:00Z"  # EDT midnight
    assert body["next_page_token"]


def test_unknown_symbols_are_simply_absent(sim_url: str, sim) -> None:
    records, _ = fetch("alpaca", sim_url, ("ZZZZ", "AAPL"), START, date(2024, 1, 5))
    assert {r["symbol"] for r in records} == {"AAPL"}


def test_bad_credentials_are_permanent(sim_url: str, sim) -> None:
    with pytest.raises(PermanentError, match=r"HTTP 403: forbidden"):
        fetch("alpaca", sim_url, ("AAPL",), START, END, api_key="", api_secret="")


@pytest.mark.parametrize("kind", ["429", "500", "503", "drop"])
def test_throttles_and_server_errors_are_transient(sim_url: str, sim, kind: str) -> None:
    sim.fault("alpaca", kind)
    with pytest.raises(TransientError) as info:
        fetch("alpaca", sim_url, ("AAPL",), START, END)
    if kind == "429":
        assert info.value.retry_after == 1.0


def test_html_error_page_is_reported_as_such(sim_url: str, sim) -> None:
    sim.fault("alpaca", "html")
    with pytest.raises(TransientError, match="HTTP 502"):
        fetch("alpaca", sim_url, ("AAPL",), START, END)


def test_truncated_json_is_permanent(sim_url: str, sim) -> None:
    sim.fault("alpaca", "malformed")
    with pytest.raises(PermanentError, match="not valid JSON"):
        fetch("alpaca", sim_url, ("AAPL",), START, END)


def test_oversized_response_is_refused(sim_url: str, sim) -> None:
    sim.fault("alpaca", "huge")
    with pytest.raises(PermanentError, match="cap"):
        fetch("alpaca", sim_url, ("AAPL",), START, END, max_response_bytes=1024 * 1024)


def test_slow_provider_times_out_as_transient(sim_url: str, sim) -> None:
    sim.fault("alpaca", "timeout")
    with pytest.raises(TransientError, match="Timeout"):
        fetch("alpaca", sim_url, ("AAPL",), START, END, timeout_s=0.5)
