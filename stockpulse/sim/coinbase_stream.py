"""Coinbase Exchange websocket feed (``/coinbase``), ``matches`` and ``heartbeat`` channels, as
docs.cdp.coinbase.com describes them.

Keyless. The client must subscribe within 5 s (``{"type":"subscribe","product_ids":[..],"channels":
["matches","heartbeat"]}``; channels may also be ``{"name":..,"product_ids":[..]}`` objects) or it is
disconnected; ``heartbeat`` sends one message a second per product (``last_trade_id``, ``sequence``). The
server answers ``{"type":"subscriptions","channels":[{"name":"matches","product_ids":[..]}]}``, then one
``last_match`` per product, then ``match`` messages, one a frame, with ``price`` and ``size`` as strings and
``side`` the maker's side. Errors are ``{"type":"error","message":..,"reason":..}``.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from websockets.sync.server import ServerConnection

from stockpulse.sim.data import TapeTrade, tape_trades
from stockpulse.sim.streams import DROPPED, Connected, StreamControl, TapeCursor, next_action, poll

SUBSCRIBE_WITHIN_S = 5.0


def match_message(trade: TapeTrade, kind: str = "match") -> dict[str, Any]:
    seconds, ns = divmod(trade.t_ns, 1_000_000_000)
    when = f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{ns // 1000:06d}Z"
    return {"type": kind, "trade_id": trade.slot,
            "maker_order_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"m{trade.symbol}{trade.slot}")),
            "taker_order_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"t{trade.symbol}{trade.slot}")),
            "side": "buy" if trade.slot % 2 else "sell", "size": f"{trade.size / 1000:.8f}",
            "price": f"{trade.price:.2f}", "product_id": trade.symbol, "sequence": trade.slot * 3 + 1,
            "time": when}


def _products(request: dict[str, Any]) -> list[str]:
    products = [p for p in request.get("product_ids") or [] if isinstance(p, str)]
    for channel in request.get("channels") or []:
        if isinstance(channel, dict) and channel.get("name") == "matches":
            products += [p for p in channel.get("product_ids") or [] if isinstance(p, str)]
    return products


def _channels(request: dict[str, Any]) -> set[str]:
    return {c if isinstance(c, str) else c.get("name") for c in request.get("channels") or []
            if isinstance(c, str) or isinstance(c, dict)}


def heartbeat_message(product: str, now_ns: int, rate: int) -> dict[str, Any]:
    last = tape_trades(product, now_ns - 10_000_000_000, now_ns, rate)
    seconds = now_ns // 1_000_000_000
    return {"type": "heartbeat", "last_trade_id": last[-1].slot if last else 0, "product_id": product,
            "sequence": last[-1].slot * 3 + 2 if last else 0,
            "time": f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.000000Z"}


def coinbase_session(control: StreamControl, ws: ServerConnection) -> None:
    cursor, connected_at = TapeCursor(control), time.monotonic()
    subscribed_once, heartbeats, next_heartbeat = False, False, time.monotonic()
    with Connected(control):
        try:
            while True:
                text = poll(ws)
                if text is not None:
                    try:
                        request = json.loads(text)
                        kind = request["type"]
                    except (ValueError, KeyError, TypeError):
                        ws.send(json.dumps({"type": "error", "message": "Failed to parse message",
                                            "reason": "malformed JSON"}))
                        continue
                    channels = _channels(request)
                    if kind not in ("subscribe", "unsubscribe") or "matches" not in channels \
                            or channels - {"matches", "heartbeat"}:
                        ws.send(json.dumps({"type": "error", "message": "Failed to subscribe",
                                            "reason": f"unsupported message or channel: {text[:100]}"}))
                        continue
                    products = _products(request)
                    if kind == "subscribe":
                        fresh = [p for p in products if p not in cursor.next_ns]
                        cursor.add(products)
                        subscribed_once, heartbeats = True, heartbeats or "heartbeat" in channels
                    else:
                        fresh = []
                        cursor.remove(products)
                    ws.send(json.dumps({"type": "subscriptions", "channels": [
                        {"name": name, "product_ids": sorted(cursor.next_ns)}
                        for name in (("matches", "heartbeat") if heartbeats else ("matches",))]}))
                    now = time.time_ns()
                    for product in fresh:
                        last = tape_trades(product, now - 10_000_000_000, now, control.tape_rate)
                        if last:
                            ws.send(json.dumps(match_message(last[-1], "last_match")))
                if not subscribed_once and time.monotonic() - connected_at > SUBSCRIBE_WITHIN_S:
                    ws.close()
                    return
                action = next_action(control, ws, '{"type":"match","trade_id":')
                if action is DROPPED:
                    return
                if action and action["action"] == "error":
                    ws.send(json.dumps({"type": "error", "message": action.get("msg", "Failed to subscribe"),
                                        "reason": action.get("reason", "BTC-XYZ is not a valid product")}))
                if heartbeats and not control.paused and time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + 1.0
                    for product in sorted(cursor.next_ns):
                        ws.send(json.dumps(heartbeat_message(product, time.time_ns(), control.tape_rate)))
                for trade in cursor.due():
                    ws.send(json.dumps(match_message(trade), separators=(",", ":")))
        except Exception:  # the client went away
            return
