"""Alpaca market data v2 websocket (``/v2/{feed}``), as documented at docs.alpaca.markets (realtime stock data).

The server greets with ``[{"T":"success","msg":"connected"}]``; the client must send ``{"action":"auth",
"key":..,"secret":..}`` within a few seconds (error 404 otherwise), then ``{"action":"subscribe","trades":[..],
"bars":[..]}``, answered with the full subscription set (``T: subscription``). Control messages come in arrays
of one; data in arrays of up to ``frame_size``: trades ``T: t`` (from the simulated tape, so the REST trades
endpoint returns the same trades for any window) and minute bars ``T: b`` at each minute's end for the
minute just closed. Errors are ``[{"T":"error","code":N,"msg":..}]``; after 402 (auth failed) and 406
(connection limit exceeded) the server closes the connection.

Stream actions (``POST /_sim/stream``) besides those of every protocol: ``error`` with ``code`` sends that
error (closing after 402/406), ``bars`` sends each bar-subscribed symbol's bar of the current minute so far.
"""

from __future__ import annotations

import json
import time
from typing import Any

from websockets.sync.server import ServerConnection

from stockpulse.sim.data import TapeTrade, rfc3339_ns, tape_trades
from stockpulse.sim.streams import DROPPED, Connected, StreamControl, TapeCursor, next_action, poll

ERRORS = {400: "invalid syntax", 401: "not authenticated", 402: "auth failed", 403: "already authenticated",
          404: "auth timeout", 405: "symbol limit exceeded", 406: "connection limit exceeded",
          407: "slow client", 408: "v2 not enabled", 409: "insufficient subscription", 500: "internal error"}
CLOSES_AFTER = (402, 404, 406)
AUTH_TIMEOUT_S = 10.0
MINUTE_NS = 60_000_000_000


def trade_message(trade: TapeTrade) -> dict[str, Any]:
    return {"T": "t", "i": trade.slot, "S": trade.symbol, "x": "V", "p": trade.price, "s": trade.size,
            "t": rfc3339_ns(trade.t_ns), "c": ["@"], "z": "C"}


def minute_bar(symbol: str, minute_ns: int, until_ns: int, rate: int) -> dict[str, Any] | None:
    trades = tape_trades(symbol, minute_ns, min(until_ns, minute_ns + MINUTE_NS), rate)
    if not trades:
        return None
    volume = sum(t.size for t in trades)
    return {"T": "b", "S": symbol, "o": trades[0].price, "h": max(t.price for t in trades),
            "l": min(t.price for t in trades), "c": trades[-1].price, "v": volume, "t": rfc3339_ns(minute_ns),
            "n": len(trades), "vw": round(sum(t.price * t.size for t in trades) / volume, 6)}


def _send(ws: ServerConnection, messages: list[dict[str, Any]]) -> None:
    ws.send(json.dumps(messages, separators=(",", ":")))


def _error(ws: ServerConnection, code: int) -> bool:
    """Send error ``code``; True when the server closes the connection after it."""
    _send(ws, [{"T": "error", "code": code, "msg": ERRORS.get(code, "internal error")}])
    if code in CLOSES_AFTER:
        ws.close()
        return True
    return False


def alpaca_session(control: StreamControl, ws: ServerConnection, keys: dict[str, Any]) -> None:
    trades, bars = TapeCursor(control), set[str]()
    authenticated, connected_at = False, time.monotonic()
    bar_minute = time.time_ns() // MINUTE_NS * MINUTE_NS
    with Connected(control):
        try:
            _send(ws, [{"T": "success", "msg": "connected"}])
            while True:
                text = poll(ws)
                if text is not None:
                    try:
                        request = json.loads(text)
                        action = request["action"]
                    except (ValueError, KeyError, TypeError):
                        if _error(ws, 400):
                            return
                        continue
                    if action == "auth":
                        if authenticated:
                            _error(ws, 403)
                            continue
                        key, secret = request.get("key"), request.get("secret")
                        good = bool(key and secret) and (not keys or (key == keys.get("api_key")
                                                                      and secret == keys.get("api_secret")))
                        if not good or control.rejecting:
                            _error(ws, 402)
                            return
                        authenticated = True
                        _send(ws, [{"T": "success", "msg": "authenticated"}])
                    elif action in ("subscribe", "unsubscribe"):
                        if not authenticated:
                            _error(ws, 401)
                            continue
                        wanted_trades = [s for s in request.get("trades") or [] if isinstance(s, str)]
                        wanted_bars = {s for s in request.get("bars") or [] if isinstance(s, str)}
                        if action == "subscribe":
                            trades.add(wanted_trades)
                            bars |= wanted_bars
                        else:
                            trades.remove(wanted_trades)
                            bars -= wanted_bars
                        _send(ws, [{"T": "subscription", "trades": sorted(trades.next_ns), "quotes": [],
                                    "bars": sorted(bars)}])
                    elif _error(ws, 400):
                        return
                if not authenticated and time.monotonic() - connected_at > AUTH_TIMEOUT_S:
                    _error(ws, 404)
                    return
                action = next_action(control, ws, '[{"T":"t","S":"AAPL","p":1.0')
                if action is DROPPED:
                    return
                if action:
                    kind = action["action"]
                    if kind == "error" and _error(ws, int(action.get("code", 406))):
                        return
                    if kind == "bars":
                        now = time.time_ns()
                        current = [minute_bar(s, now // MINUTE_NS * MINUTE_NS, now, control.tape_rate)
                                   for s in sorted(bars)]
                        _send(ws, [b for b in current if b])
                due = [trade_message(t) for t in trades.due()]
                for i in range(0, len(due), control.frame_size):
                    _send(ws, due[i:i + control.frame_size])
                now = time.time_ns()
                if now // MINUTE_NS * MINUTE_NS > bar_minute:  # a minute closed: its bar
                    closed = [minute_bar(s, bar_minute, bar_minute + MINUTE_NS, control.tape_rate)
                              for s in sorted(bars)]
                    if closed and not control.paused:
                        _send(ws, [b for b in closed if b])
                    bar_minute = now // MINUTE_NS * MINUTE_NS
        except Exception:  # the client went away
            return
