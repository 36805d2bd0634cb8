"""Deterministic market data: a random walk per (seed, symbol) over trading days, valid OHLC.

Prices on a given day do not depend on the range asked for, so overlapping requests agree.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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


# ------------------------------------------------------------------------------------------------ news

NEWS_PER_DAY = 2
PUBLISHERS = (("Reuters", "https://www.reuters.com"), ("MarketWatch", "https://www.marketwatch.com"),
              ("Benzinga", "https://www.benzinga.com"))
SENTIMENT_LABELS = ((-0.35, "Bearish"), (-0.15, "Somewhat-Bearish"), (0.15, "Neutral"), (0.35, "Somewhat-Bullish"))


@dataclass(frozen=True)
class Story:
    """One news story about a symbol; every simulated provider renders the same stories in its own format
    (and URL variant), so the same story reaches the database once."""

    symbol: str
    day: date
    number: int
    published_at: datetime
    url: str
    title: str
    summary: str
    publisher: str
    publisher_url: str
    author: str
    sentiment: float

    @property
    def sentiment_label(self) -> str:
        for bound, label in SENTIMENT_LABELS:
            if self.sentiment <= bound:
                return label
        return "Bullish"


def news_stories(seed: int, symbol: str, start: date, end: date, *, today: date) -> list[Story]:
    """``NEWS_PER_DAY`` stories per calendar day in [start, end] up to ``today``, oldest first."""
    if is_unknown(symbol):
        return []
    out, day = [], max(start, EPOCH)
    while day <= min(end, today):
        for number in range(NEWS_PER_DAY):
            out.append(_story(seed, symbol, day, number))
        day += timedelta(days=1)
    return out


@lru_cache(maxsize=65536)
def _story(seed: int, symbol: str, day: date, number: int) -> Story:
    digest = hashlib.sha256(f"{seed}:{symbol}:{day}:{number}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    publisher, publisher_url = PUBLISHERS[rng.randrange(len(PUBLISHERS))]
    minute = (13 * 60 + 5) + number * 7 * 60 + rng.randrange(60)  # 13:05-14:05 and 20:05-21:05 UTC
    published = datetime(day.year, day.month, day.day, minute // 60, minute % 60, rng.randrange(60), tzinfo=UTC)
    headline = ("shares rise as analysts lift targets", "slips after guidance & margin warning",
                "unveils new product line", "to buy back $2B of stock")[rng.randrange(4)]
    return Story(
        symbol=symbol, day=day, number=number, published_at=published,
        url=f"https://news.example.com/{symbol.lower()}/{day:%Y/%m/%d}/story-{number}",
        title=f"{symbol} {headline} – “{day:%b %d}” update",
        summary=f"{symbol} was in focus on {day:%A}: <b>{publisher}</b> reports the company’s view & outlook.",
        publisher=publisher, publisher_url=publisher_url, author=("Jane Doe", "John Roe", "Staff")[number % 3],
        sentiment=round(rng.uniform(-0.6, 0.6), 6),
    )
