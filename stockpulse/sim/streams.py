"""The simulator's websocket streams (Finnhub's trades protocol), on a loopback port of their own.

Each connection streams trades for the symbols it subscribed to at ``tick_rate`` trades per second (in
frames of up to ``frame_size`` trades, several symbols per frame, as Finnhub does), with a ``ping`` frame
every few seconds. Every trade sent is recorded, so tests can compare the database with exactly what
went out. Control through the HTTP simulator: ``POST /_sim/stream {"action": ...}`` with ``drop`` (cut
the TCP connection without a close frame), ``stall`` (``seconds`` without frames), ``malformed`` (one
frame that is not JSON), ``error`` (Finnhub's error frame), ``reject`` (refuse handshakes with 401 until
``accept``), ``pause``/``resume`` (stop/start sending), ``reset`` (forget what was sent);
``GET /_sim/stream`` returns what was sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Response
from websockets.sync.server import Server, ServerConnection, serve


class StreamControl:
    def __init__(self, tick_rate: float = 100.0, frame_size: int = 10, ping_every_s: float = 5.0):
        self.tick_rate = tick_rate
        self.frame_size = frame_size
        self.ping_every_s = ping_every_s
        self.lock = threading.Lock()
        self.sent: list[list[Any]] = []  # [symbol, t_ms, price, size, conditions]
        self.actions: deque[dict[str, Any]] = deque()
        self.rejecting = False
        self.paused = False
        self.connections = 0
        self.sequence = 0

    def act(self, action: dict[str, Any]) -> dict[str, Any]:
        kind = action.get("action")
        with self.lock:
            if kind == "reject":
                self.rejecting = True
            elif kind == "accept":
                self.rejecting = False
            elif kind == "pause":
                self.paused = True
            elif kind == "resume":
                self.paused = False
            elif kind == "reset":
                self.sent.clear()
                self.actions.clear()
                self.rejecting = self.paused = False
            elif kind == "rate":
                self.tick_rate = float(action.get("ticks_per_s", self.tick_rate))
            elif kind in ("drop", "stall", "malformed", "error"):
                self.actions.append(action)
            else:
                raise ValueError(f"unknown stream action {kind!r}")
            return {"sent": len(self.sent), "connections": self.connections}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"sent": list(self.sent), "connections": self.connections, "paused": self.paused}

    def next_trades(self, symbols: list[str], count: int) -> list[dict[str, Any]]:
        now_ms = int(time.time() * 1000)
        out = []
        with self.lock:
            for _ in range(count):
                n = self.sequence
                self.sequence += 1
                symbol = symbols[n % len(symbols)]
                trade = {"c": [str(1 + n % 3), "12"] if n % 4 else None, "p": round(100 + (n % 5000) * 0.01, 2),
                         "s": symbol, "t": now_ms, "v": 1 + n % 50}
                self.sent.append([symbol, now_ms, trade["p"], trade["v"], trade["c"]])
                out.append(trade)
        return out

    def take_action(self) -> dict[str, Any] | None:
        with self.lock:
            return self.actions.popleft() if self.actions else None


def _finnhub_session(control: StreamControl, ws: ServerConnection) -> None:
    with control.lock:
        control.connections += 1
    subscribed: list[str] = []
    last_ping = next_tick = time.monotonic()
    try:
        while True:
            try:
                message = ws.recv(timeout=0.005)
                request = json.loads(message)
                symbol = request.get("symbol")
                if request.get("type") == "subscribe" and symbol not in subscribed:
                    subscribed.append(symbol)
                elif request.get("type") == "unsubscribe" and symbol in subscribed:
                    subscribed.remove(symbol)
            except TimeoutError:
                pass
            action = control.take_action()
            if action:
                kind = action["action"]
                if kind == "drop":
                    ws.socket.shutdown(socket.SHUT_RDWR)
                    return
                if kind == "stall":
                    time.sleep(float(action.get("seconds", 5)))
                    next_tick = time.monotonic()
                elif kind == "malformed":
                    ws.send('{"data":[{"p":1.0,"s":"AAPL"')
                elif kind == "error":
                    ws.send(json.dumps({"msg": action.get("msg", "Subscribing to too many symbols"),
                                        "type": "error"}))
            now = time.monotonic()
            if now - last_ping >= control.ping_every_s:
                ws.send('{"type":"ping"}')
                last_ping = now
            if not subscribed or control.paused:
                next_tick = now
                continue
            due = int((now - next_tick) * control.tick_rate)
            if due <= 0:
                continue
            next_tick += due / control.tick_rate
            while due > 0:
                batch = min(due, control.frame_size)
                due -= batch
                ws.send(json.dumps({"data": control.next_trades(subscribed, batch), "type": "trade"},
                                   separators=(",", ":")))
    except Exception:  # the client went away
        return
    finally:
        with control.lock:
            control.connections -= 1


def serve_streams(control: StreamControl, host: str = "127.0.0.1", port: int = 0) -> tuple[Server, str]:
    """Start the Finnhub-protocol stream server in a thread; returns (server, ws:// URL)."""

    def check_token(connection: ServerConnection, request: Any) -> Response | None:
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        if not token or control.rejecting:
            return connection.respond(401, "Invalid API key.\n")
        return None

    server = serve(lambda ws: _finnhub_session(control, ws), host, port, process_request=check_token)
    threading.Thread(target=server.serve_forever, name="stockpulse-sim-ws", daemon=True).start()
    return server, f"ws://{host}:{server.socket.getsockname()[1]}"
