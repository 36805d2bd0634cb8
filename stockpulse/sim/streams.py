"""The simulator's websocket streams, on a loopback port of their own, one protocol per path.

- ``/?token=KEY``: Finnhub's trades protocol (below).
- ``/v2/{feed}``: Alpaca market data v2 (``stockpulse.sim.alpaca_stream``).
- ``/coinbase``: Coinbase Exchange's ``matches`` channel (``stockpulse.sim.coinbase_stream``).

Finnhub: each connection streams trades for the symbols it subscribed to at ``tick_rate`` trades per second (in
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

from stockpulse.sim.data import TapeTrade, tape_trades


class StreamControl:
    def __init__(self, tick_rate: float = 100.0, frame_size: int = 10, ping_every_s: float = 5.0,
                 tape_rate: int = 20):
        self.tick_rate = tick_rate
        self.tape_rate = tape_rate  # trades a second per symbol on the tape Alpaca and Coinbase stream
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
                self.tape_rate = int(action.get("tape_per_symbol_s", self.tape_rate))
            elif kind in ("drop", "stall", "malformed", "error", "bars"):
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
            action = next_action(control, ws, '{"data":[{"p":1.0,"s":"AAPL"')
            if action is DROPPED:
                return
            if action and action["action"] == "stall":
                next_tick = time.monotonic()  # nothing is owed for a stall
            if action and action["action"] == "error":
                ws.send(json.dumps({"msg": action.get("msg", "Subscribing to too many symbols"), "type": "error"}))
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


def serve_streams(control: StreamControl, host: str = "127.0.0.1", port: int = 0,
                  keys: dict[str, Any] | None = None) -> tuple[Server, str]:
    """Start the stream server in a thread; returns (server, ws:// URL). ``keys`` as in the HTTP simulator."""
    from stockpulse.sim.alpaca_stream import alpaca_session
    from stockpulse.sim.coinbase_stream import coinbase_session

    def check_token(connection: ServerConnection, request: Any) -> Response | None:
        if request.path.startswith(("/v2/", "/coinbase")):
            return None  # Alpaca authenticates in the protocol; Coinbase's public channels need no key
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        if not token or control.rejecting:
            return connection.respond(401, "Invalid API key.\n")
        return None

    def session(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "/"
        if path.startswith("/v2/"):
            alpaca_session(control, ws, (keys or {}).get("alpaca") or {})
        elif path.startswith("/coinbase"):
            coinbase_session(control, ws)
        else:
            _finnhub_session(control, ws)

    server = serve(session, host, port, process_request=check_token)
    threading.Thread(target=server.serve_forever, name="stockpulse-sim-ws", daemon=True).start()
    return server, f"ws://{host}:{server.socket.getsockname()[1]}"


class TapeCursor:
    """Which trades of the tape one connection has sent: each symbol streams from its subscription on."""

    def __init__(self, control: StreamControl):
        self.control = control
        self.next_ns: dict[str, int] = {}

    def add(self, symbols: list[str]) -> None:
        now = time.time_ns()
        for symbol in symbols:
            self.next_ns.setdefault(symbol, now)

    def remove(self, symbols: list[str]) -> None:
        for symbol in symbols:
            self.next_ns.pop(symbol, None)

    def due(self) -> list[TapeTrade]:
        """The trades that happened since the last call, in time order (nothing while paused: held back)."""
        if self.control.paused or not self.next_ns:
            return []
        now = time.time_ns()
        out = []
        for symbol, since in self.next_ns.items():
            out.extend(tape_trades(symbol, since, now, self.control.tape_rate))
            self.next_ns[symbol] = now
        out.sort(key=lambda t: t.t_ns)
        return out


class Connected:
    """Counts a connection in ``control.connections`` while the session runs."""

    def __init__(self, control: StreamControl):
        self.control = control

    def __enter__(self) -> None:
        with self.control.lock:
            self.control.connections += 1

    def __exit__(self, *_: Any) -> None:
        with self.control.lock:
            self.control.connections -= 1


DROPPED = {"action": "drop"}


def poll(ws: ServerConnection) -> str | None:
    """A client message if one is waiting (a few ms at most), so a session can keep sending."""
    try:
        message = ws.recv(timeout=0.005)
    except TimeoutError:
        return None
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


def next_action(control: StreamControl, ws: ServerConnection, malformed_frame: str) -> dict[str, Any] | None:
    """Take the next queued action and do what every protocol does alike: ``drop`` (cut the TCP connection
    without a close frame; returns DROPPED), ``stall`` (sleep) and ``malformed`` (send ``malformed_frame``).
    Returns the action (None if there was none) for the protocol to do the rest."""
    action = control.take_action()
    if action is None:
        return None
    kind = action["action"]
    if kind == "drop":
        ws.socket.shutdown(socket.SHUT_RDWR)
        return DROPPED
    if kind == "stall":
        time.sleep(float(action.get("seconds", 5)))
    elif kind == "malformed":
        ws.send(malformed_frame)
    return action
