from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

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


# ------------------------------------------------------------------------------------ trades (REST)


def ns(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def test_trades_of_an_exact_window_follow_pages_and_match_the_tape(sim_url: str, sim) -> None:
    from stockpulse.sim.data import tape_trades

    until = datetime.now(UTC) - timedelta(seconds=1)
    since = until - timedelta(seconds=30)
    records, client = fetch("alpaca", sim_url, ("MSFT", "AAPL"), since.date(), until.date(), data_type="trades",
                            window=(since, until), options={"page_limit": 500})
    for symbol in ("AAPL", "MSFT"):
        tape = tape_trades(symbol, ns(since), ns(until) + 1000, 20)
        got = [r for r in records if r["symbol"] == symbol]
        assert [r["trade_id"] for r in got] == [str(t.slot) for t in tape]  # start and end inclusive, in order
    assert client.requests_made == -(-len(records) // 500)
    first = records[0]
    assert first["symbol"] == "AAPL"  # sorted by symbol, then time
    assert (first["source"], first["exchange"], first["conditions"]) == ("alpaca", "V", "@")
    assert datetime.fromisoformat(first["ts"]) >= since


def test_trades_wire_format_matches_alpaca(sim_url: str, sim) -> None:
    body = requests.get(f"{sim_url}/v2/stocks/trades", params={
        "symbols": "AAPL", "start": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(), "limit": 2},
        headers={"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}, timeout=5).json()
    assert set(body) == {"trades", "next_page_token"} and body["next_page_token"]
    trade = body["trades"]["AAPL"][0]
    assert set(trade) == {"t", "x", "p", "s", "c", "i", "z"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", trade["t"])  # nanoseconds, as Alpaca sends


# -------------------------------------------------------------------------------------------- stream


def alpaca_stream() -> Any:
    from stockpulse.config import ProviderSettings
    from stockpulse.providers.alpaca import AlpacaTradeStream

    return AlpacaTradeStream(ProviderSettings(name="alpaca", api_key="KEY", api_secret="SECRET",
                                              options={"ws_url": "wss://stream.data.alpaca.markets/"}))


def test_stream_handshake_and_subscription_messages() -> None:
    stream = alpaca_stream()
    assert stream.url() == "wss://stream.data.alpaca.markets/v2/iex"
    assert json.loads(stream.handshake()[0]) == {"action": "auth", "key": "KEY", "secret": "SECRET"}
    assert json.loads(stream.subscribe(("AAPL", "MSFT"))[0]) == {
        "action": "subscribe", "trades": ["AAPL", "MSFT"], "bars": ["AAPL", "MSFT"]}
    assert json.loads(stream.unsubscribe(("MSFT",))[0]) == {"action": "unsubscribe", "trades": ["MSFT"],
                                                             "bars": ["MSFT"]}
    assert stream.subscribe(()) == []


def test_stream_frames_from_the_docs() -> None:
    from stockpulse.datatypes import get_data_type

    stream = alpaca_stream()
    # Verbatim from Alpaca's realtime stock data docs (wscat session).
    trade = stream.parse('[{"T":"t","i":96921,"S":"AAPL","x":"D","p":126.55,"s":1,"t":"2021-02-22T15:51:44.208Z",'
                         '"c":["@","I"],"z":"C"}]')
    assert trade.records == [{"source": "alpaca", "symbol": "AAPL", "ts": "2021-02-22T15:51:44.208000+00:00",
                              "trade_id": "96921", "price": 126.55, "size": 1, "conditions": "@,I",
                              "exchange": "D"}]
    assert not get_data_type("trades").validate(trade.records).rejected
    bar = stream.parse('[{"T":"b","S":"SPY","o":388.985,"h":389.13,"l":388.975,"c":389.12,"v":49378,'
                       '"t":"2021-02-22T19:15:00Z","n":66,"vw":177.987562}]')
    assert bar.records == [] and bar.extra["bars"] == [{
        "symbol": "SPY", "interval": "1m", "ts": "2021-02-22T19:15:00+00:00", "open": 388.985, "high": 389.13,
        "low": 388.975, "close": 389.12, "volume": 49378, "source": "alpaca"}]
    assert not get_data_type("bars").validate(bar.extra["bars"]).rejected
    nanos = stream.parse('[{"T":"t","i":1,"S":"AMD","x":"V","p":87.66,"s":4,"t":"2021-02-22T15:51:45.335689322Z",'
                         '"c":["@"],"z":"C"}]')
    assert nanos.records[0]["ts"] == "2021-02-22T15:51:45.335689+00:00"
    for control in ('[{"T":"success","msg":"connected"}]', '[{"T":"success","msg":"authenticated"}]',
                    '[{"T":"subscription","trades":["AAPL"],"quotes":[],"bars":["*"]}]'):
        frame = stream.parse(control)
        assert (frame.records, frame.extra, frame.error, frame.malformed) == ([], {}, None, None)


@pytest.mark.parametrize(("code", "msg", "kind"), [
    (402, "auth failed", PermanentError), (409, "insufficient subscription", PermanentError),
    (405, "symbol limit exceeded", PermanentError), (400, "invalid syntax", PermanentError),
    (406, "connection limit exceeded", TransientError), (407, "slow client", TransientError),
    (404, "auth timeout", TransientError), (500, "internal error", TransientError)])
def test_stream_error_codes(code: int, msg: str, kind: type) -> None:
    frame = alpaca_stream().parse(json.dumps([{"T": "error", "code": code, "msg": msg}]))
    assert type(frame.error) is kind and f"{code}: {msg}" in str(frame.error)


def test_stream_frames_that_cannot_be_read_are_quarantinable() -> None:
    stream = alpaca_stream()
    assert stream.parse('[{"T":"t","S":"AAPL"').malformed == "frame is not valid JSON"
    assert stream.parse('{"T":"t"}').malformed == "frame is not a JSON array of messages"
    bad = stream.parse('[{"T":"t","S":"AAPL","p":-1,"s":1,"t":"yesterday","i":5}]').records
    from stockpulse.datatypes import get_data_type

    assert len(get_data_type("trades").validate(bad).rejected) == 1
