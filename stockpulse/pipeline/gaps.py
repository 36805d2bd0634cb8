"""Missing daily bars: the sessions an exchange calendar expects that the database lacks, and their fill.

A pipeline's calendar is ``options.calendar`` (default ``XNYS``; ``always`` for markets that trade every
day, the default for Coinbase). The window ends at the last session whose close is ``settle_hours`` (2)
past, so today's bar is not missing before it can exist. Per symbol it starts at the later of ``start``
(default ``lookback_days`` back) and the symbol's first stored bar: days before a listing are not gaps.
A symbol with no bar at all is missing the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from stockpulse.config import PipelineSettings, get_settings
from stockpulse.datatypes.bars import BARS
from stockpulse.db.engine import get_engine
from stockpulse.errors import ConfigError

ALWAYS = "always"
MISSING_KEY = "stockpulse:gaps:missing"  # pipeline -> missing sessions at the last daily detection
PROVIDER_CALENDARS = {"coinbase": ALWAYS}


@dataclass(frozen=True)
class SymbolGaps:
    symbol: str
    expected: int  # sessions in the symbol's window
    missing: tuple[date, ...]

    def ranges(self) -> list[tuple[date, date]]:
        """Missing sessions as contiguous runs of sessions (a weekend between two missing days joins them)."""
        out: list[list[date]] = []
        for day in self.missing:
            if out and (day - out[-1][1]).days <= 4:
                out[-1][1] = day
            else:
                out.append([day, day])
        return [(a, b) for a, b in out]


def pipeline_calendar(pipe: PipelineSettings) -> str:
    return str(pipe.options.get("calendar") or PROVIDER_CALENDARS.get(pipe.provider, "XNYS"))


def expected_sessions(calendar_name: str, start: date, end: date) -> list[date]:
    if start > end:
        return []
    if calendar_name == ALWAYS:
        return [start + timedelta(days=i) for i in range((end - start).days + 1)]
    import pandas as pd

    from stockpulse.calendars import calendar

    cal = calendar(calendar_name)
    first, last = max(pd.Timestamp(start), cal.first_session), min(pd.Timestamp(end), cal.last_session)
    if first > last:
        return []
    return [s.date() for s in cal.sessions_in_range(first, last)]


def last_settled_session(calendar_name: str, now: datetime, settle_hours: float = 2.0) -> date:
    """The newest session whose bar should exist by ``now`` (its close plus ``settle_hours`` has passed)."""
    if calendar_name == ALWAYS:
        return (now - timedelta(hours=24 + settle_hours)).date()
    import pandas as pd

    from stockpulse.calendars import calendar

    cal = calendar(calendar_name)
    moment = pd.Timestamp(now).tz_convert("UTC")
    for session in reversed(cal.sessions_in_range(moment.normalize().tz_localize(None) - pd.Timedelta(days=14),
                                                  moment.normalize().tz_localize(None))):
        if cal.session_close(session) + pd.Timedelta(hours=settle_hours) <= moment:
            return session.date()
    raise ConfigError(f"no settled {calendar_name} session in the last two weeks")


def find_gaps(pipeline: str, *, symbols: list[str] | None = None, start: date | None = None,
              end: date | None = None, now: datetime | None = None) -> list[SymbolGaps]:
    pipe = get_settings().pipeline(pipeline)
    if pipe.data_type != "bars" or pipe.interval != "1d":
        raise ConfigError(f"pipeline {pipeline!r} loads {pipe.data_type} ({pipe.interval}): gap detection covers "
                          "daily bars")
    calendar_name = pipeline_calendar(pipe)
    now = now or datetime.now(UTC)
    end = min(end or date.max, last_settled_session(calendar_name, now, float(pipe.options.get("settle_hours", 2))))
    start = start or end - timedelta(days=int(pipe.options.get("lookback_days", 365)))
    chosen = tuple(symbols) if symbols else pipe.symbols
    stored: dict[str, set[date]] = {s: set() for s in chosen}
    first: dict[str, date] = {}
    table, own = BARS.own_rows(pipe)
    mine = [table.c.symbol.in_(chosen), table.c.interval == "1d", *own]
    with get_engine().connect() as conn:
        for row in conn.execute(select(table.c.symbol, func.min(table.c.ts)).where(*mine).group_by(table.c.symbol)):
            first[row[0]] = row[1].date()
        for row in conn.execute(select(table.c.symbol, table.c.ts).where(
                *mine, table.c.ts >= datetime.combine(start, datetime.min.time(), UTC),
                table.c.ts < datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC))):
            stored[row.symbol].add(row.ts.date())
    out = []
    for symbol in chosen:
        sessions = expected_sessions(calendar_name, max(start, first.get(symbol, start)), end)
        out.append(SymbolGaps(symbol, len(sessions), tuple(d for d in sessions if d not in stored[symbol])))
    return out


def fill_gaps(pipeline: str, gaps: list[SymbolGaps]) -> list[str]:
    """One backfill run per missing range, symbols with the same range sharing it."""
    from stockpulse.pipeline.runs import start_run

    by_range: dict[tuple[date, date], list[str]] = {}
    for symbol_gaps in gaps:
        for window in symbol_gaps.ranges():
            by_range.setdefault(window, []).append(symbol_gaps.symbol)
    return [start_run(pipeline, symbols=symbols, trigger="backfill", start=a, end=b)
            for (a, b), symbols in sorted(by_range.items())]


def summary(gaps: list[SymbolGaps]) -> dict[str, Any]:
    return {"missing": sum(len(g.missing) for g in gaps), "expected": sum(g.expected for g in gaps),
            "symbols": {g.symbol: [f"{a}..{b}" if a != b else str(a) for a, b in g.ranges()] for g in gaps
                        if g.missing}}


def detect_all(now: datetime | None = None) -> dict[str, int]:
    """Missing sessions of every enabled daily-bars pipeline, kept in Redis for ``stockpulse status`` and the
    exporter (``stockpulse_missing_sessions``); run daily by ``stockpulse.maintenance.detect_gaps``."""
    from stockpulse.redis_conn import redis_client

    counts = {name: sum(len(g.missing) for g in find_gaps(name, now=now))
              for name, pipe in sorted(get_settings().pipelines.items())
              if pipe.enabled and pipe.data_type == "bars" and pipe.interval == "1d"}
    client = redis_client()
    with client.pipeline() as tx:
        tx.delete(MISSING_KEY)
        if counts:
            tx.hset(MISSING_KEY, mapping=counts)
        tx.execute()
    return counts


def recorded_missing(client: Any) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(MISSING_KEY).items()}
