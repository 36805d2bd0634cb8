"""Deterministic market data: a random walk per (seed, symbol) over trading days, valid OHLC.

Prices on a given day do not depend on the range asked for, so overlapping requests agree.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

EPOCH = date(2015, 1, 1)


@dataclass(frozen=True)
class DailyBar:
    day: date
    open: float
    high: float
    low: float
    close: float
    volume: int


def is_crypto(symbol: str) -> bool:
    return "-" in symbol and symbol.split("-")[-1] in {"USD", "USDT", "EUR", "BTC", "GBP", "USDC"}


def is_unknown(symbol: str) -> bool:
    """Symbols the simulated providers do not list (for unknown-symbol error paths)."""
    return symbol.upper().startswith("ZZ")


def trading_days(start: date, end: date, *, every_day: bool = False) -> list[date]:
    # Weekdays only; exchange holidays are not modelled by the simulator.
    days, d = [], start
    while d <= end:
        if every_day or d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


@lru_cache(maxsize=4096)
def _series(seed: int, symbol: str, last: date) -> tuple[tuple[date, ...], tuple[DailyBar, ...]]:
    digest = hashlib.sha256(f"{seed}:{symbol}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    price = 20.0 + rng.random() * 480.0
    days = trading_days(EPOCH, last, every_day=is_crypto(symbol))
    bars = []
    for day in days:
        open_ = price * math.exp(rng.gauss(0, 0.004))
        close = open_ * math.exp(rng.gauss(0.0002, 0.015))
        high = max(open_, close) * (1 + abs(rng.gauss(0, 0.006)))
        low = min(open_, close) * (1 - abs(rng.gauss(0, 0.006)))
        volume = int(rng.lognormvariate(14, 0.6))
        bars.append(DailyBar(day, round(open_, 4), round(high, 4), round(low, 4), round(close, 4), volume))
        price = close
    return tuple(days), tuple(bars)


def daily_bars(seed: int, symbol: str, start: date, end: date, *, today: date) -> list[DailyBar]:
    """Bars for sessions in [start, end], none after ``today`` - 1 (today's session is not closed)."""
    last = min(end, today - timedelta(days=1))
    if last < EPOCH or start > last:
        return []
    _, bars = _series(seed, symbol, today - timedelta(days=1))
    return [b for b in bars if start <= b.day <= last]
