"""Deterministic market data: a random walk per (seed, symbol) over trading days, valid OHLC.

Prices on a given day do not depend on the range asked for, so overlapping requests agree.
"""

from __future__ import annotations

import hashlib
import math
import random
import zlib
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


# ------------------------------------------------------------------------------------------------ fundamentals


def sim_cik(symbol: str) -> int:
    return 100_000 + int(hashlib.sha256(symbol.encode()).hexdigest()[:8], 16) % 1_800_000


@dataclass(frozen=True)
class Fact:
    taxonomy: str
    concept: str
    unit: str
    start: date | None
    end: date
    value: float | int
    accession: str
    fy: int
    fp: str
    form: str
    filed: date
    frame: str | None = None


def company_facts(seed: int, symbol: str, *, today: date) -> list[Fact]:
    """Quarterly 10-Q and annual 10-K facts since 2019 as SEC's companyfacts lists them: each period again
    in later filings (comparatives), and the annual revenue of 2021 restated by a 10-K/A."""
    digest = hashlib.sha256(f"{seed}:{symbol}:facts".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    cik = sim_cik(symbol)
    revenue, assets, shares = rng.uniform(1e9, 5e10), rng.uniform(5e9, 2e11), int(rng.uniform(1e8, 5e9))
    facts: list[Fact] = []
    seq = 0

    def accession(year: int) -> str:
        nonlocal seq
        seq += 1
        return f"{cik:010d}-{year % 100:02d}-{seq:06d}"

    for year in range(2019, today.year + 1):
        annual = 0.0
        for quarter in range(1, 5):
            q_start = date(year, 3 * quarter - 2, 1)
            q_end = (date(year, 3 * quarter, 28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
            quarter_revenue = round(revenue * rng.uniform(0.22, 0.28))
            annual += quarter_revenue
            assets *= rng.uniform(0.98, 1.05)
            if quarter < 4:
                filed = q_end + timedelta(days=35)
                if filed > today:
                    return facts
                acc = accession(year)
                facts += [
                    Fact("us-gaap", "Revenues", "USD", q_start, q_end, quarter_revenue, acc, year, f"Q{quarter}",
                         "10-Q", filed, f"CY{year}Q{quarter}"),
                    Fact("us-gaap", "Assets", "USD", None, q_end, round(assets), acc, year, f"Q{quarter}", "10-Q",
                         filed, f"CY{year}Q{quarter}I"),
                    Fact("dei", "EntityCommonStockSharesOutstanding", "shares", None, filed - timedelta(days=5),
                         shares, acc, year, f"Q{quarter}", "10-Q", filed),
                ]
        filed = date(year + 1, 2, 20)
        if filed > today:
            return facts
        acc = accession(year + 1)
        year_start, year_end = date(year, 1, 1), date(year, 12, 31)
        eps = round(annual * 0.2 / shares, 2)
        facts += [
            Fact("us-gaap", "Revenues", "USD", year_start, year_end, round(annual), acc, year, "FY", "10-K", filed,
                 f"CY{year}"),
            Fact("us-gaap", "Assets", "USD", None, year_end, round(assets), acc, year, "FY", "10-K", filed,
                 f"CY{year}Q4I"),
            Fact("us-gaap", "EarningsPerShareBasic", "USD/shares", year_start, year_end, eps, acc, year, "FY", "10-K",
                 filed, f"CY{year}"),
        ]
        if year >= 2020:  # last year's annual revenue again, as the comparative in this 10-K (as last filed)
            prior = max((f for f in facts if f.concept == "Revenues" and f.start == date(year - 1, 1, 1)
                         and f.end == date(year - 1, 12, 31)), key=lambda f: f.filed)
            facts.append(Fact("us-gaap", "Revenues", "USD", prior.start, prior.end, prior.value, acc, year, "FY",
                              "10-K", filed))
        if year == 2021:  # a restatement: the same period, a later filing, another value
            restated = date(year + 1, 5, 10)
            if restated <= today:
                facts.append(Fact("us-gaap", "Revenues", "USD", year_start, year_end, round(annual * 0.97),
                                  accession(year + 1), year, "FY", "10-K/A", restated))
        revenue *= rng.uniform(0.95, 1.15)
    return facts


def company_profile(seed: int, symbol: str) -> dict[str, object]:
    digest = hashlib.sha256(f"{seed}:{symbol}:profile".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    sector, industry = (("Technology", "Software"), ("Health Care", "Biotechnology"),
                        ("Financials", "Banks"), ("Energy", "Oil & Gas"))[rng.randrange(4)]
    return {"name": f"{symbol.title()} Holdings Inc", "exchange": ("NASDAQ", "NYSE")[rng.randrange(2)],
            "sector": sector, "industry": industry, "shares": int(rng.uniform(1e8, 5e9)),
            "market_cap": round(rng.uniform(1e9, 3e12)), "ipo": date(1980 + rng.randrange(40), 1 + rng.randrange(12),
                                                                        1 + rng.randrange(28)),
            "pe": round(rng.uniform(5, 60), 2), "beta": round(rng.uniform(0.4, 2.0), 3),
            "eps": round(rng.uniform(-2, 12), 2), "cik": sim_cik(symbol)}


# ------------------------------------------------------------------------------------------- trade tape


@dataclass(frozen=True)
class TapeTrade:
    """One trade of the simulated consolidated tape. ``slot`` is the trade's number for its symbol."""

    symbol: str
    slot: int
    t_ns: int
    price: float
    size: int


def tape_trades(symbol: str, start_ns: int, end_ns: int, per_second: int) -> list[TapeTrade]:
    """Every trade of ``symbol`` with start_ns <= time < end_ns, ``per_second`` trades a second.

    The tape depends only on (symbol, time): the websocket streams it live and the REST endpoints return
    the same trades for any past window, so a gap filled over REST is checkable trade by trade.
    """
    period = 1_000_000_000 // per_second
    first, last = -(-start_ns // period), (end_ns - 1) // period
    base = 20 + zlib.crc32(symbol.encode()) % 480
    return [TapeTrade(symbol, k, k * period + (k * 7919) % min(period, 1_000_000),
                      round(base + (k % 1000) * 0.01, 2), 1 + k % 50) for k in range(first, last + 1)]


def rfc3339_ns(t_ns: int) -> str:
    """Nanosecond RFC 3339 in UTC, as Alpaca writes trade times (``2021-02-22T15:51:44.208123456Z``)."""
    seconds, ns = divmod(t_ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{ns:09d}Z"
