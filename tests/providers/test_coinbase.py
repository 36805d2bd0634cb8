from __future__ import annotations

import json
from datetime import date
from typing import Any

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


# -------------------------------------------------------------------------------------------- stream


def matches_stream() -> Any:
    from stockpulse.config import ProviderSettings
    from stockpulse.providers.coinbase import CoinbaseMatchesStream

    return CoinbaseMatchesStream(ProviderSettings(name="coinbase"))


def test_stream_subscribes_to_matches_without_a_key() -> None:
    stream = matches_stream()
    assert stream.url() == "wss://ws-feed.exchange.coinbase.com" and stream.handshake() == []
    assert json.loads(stream.subscribe(("BTC-USD", "ETH-USD"))[0]) == {
        "type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channels": ["matches", "heartbeat"]}


def test_a_real_match_becomes_a_valid_trade() -> None:
    from stockpulse.datatypes import get_data_type

    # A real capture (2026-07-04) of the matches channel.
    frame = matches_stream().parse(
        '{"type":"match","trade_id":1050206160,"maker_order_id":"52fc8a90-23bc-4ca1-a593-4e7f250fa2e0",'
        '"taker_order_id":"63ad3cd1-637f-4601-a7d4-30b600e51263","side":"buy","size":"0.00634069",'
        '"price":"63109.18","product_id":"BTC-USD","sequence":132031021885,"time":"2026-07-04T23:34:58.071539Z"}')
    assert frame.records == [{"source": "coinbase", "symbol": "BTC-USD", "ts": "2026-07-04T23:34:58.071539+00:00",
                              "trade_id": "1050206160", "price": 63109.18, "size": 0.00634069, "conditions": None,
                              "exchange": None}]
    assert not get_data_type("trades").validate(frame.records).rejected


def test_control_heartbeat_and_unknown_messages_are_ignored_and_errors_stop() -> None:
    stream = matches_stream()
    for text in ('{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}',
                 '{"type":"heartbeat","last_trade_id":1092969669,"product_id":"BTC-USD","sequence":136118091026,'
                 '"time":"2026-09-15T11:01:54.000000Z"}', '{"type":"some_new_type"}'):
        frame = stream.parse(text)
        assert (frame.records, frame.error, frame.malformed) == ([], None, None)
    error = stream.parse('{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid product"}')
    assert isinstance(error.error, PermanentError) and "not a valid product" in str(error.error)
    assert stream.parse('{"type":"match","trade_id":').malformed == "frame is not valid JSON"
