"""OHLCV bars: schema, fast validation path, transport rows.

A daily bar's ``ts`` is its session date at 00:00 UTC; intraday bars carry the UTC start of their window.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from stockpulse.datatypes.base import DataType
from stockpulse.db.models import bars as bars_table
from stockpulse.db.models import reference_bars

INTERVALS = ("1m", "5m", "15m", "1h", "1d")
SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9.\-:/_]{0,23}$")
PRICE_FIELDS = ("open", "high", "low", "close")
FIELDS = ("symbol", "interval", "ts", "open", "high", "low", "close", "volume", "source")
_FIELD_SET = frozenset(FIELDS)
_INTERVAL_SET = frozenset(INTERVALS)


def _price() -> fields.Float:
    return fields.Float(required=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))


class BarSchema(Schema):
    class Meta:
        unknown = RAISE

    symbol = fields.String(required=True, validate=validate.Regexp(SYMBOL, error="invalid symbol"))
    interval = fields.String(required=True, validate=validate.OneOf(INTERVALS))
    ts = fields.AwareDateTime(required=True)
    open = _price()
    high = _price()
    low = _price()
    close = _price()
    volume = fields.Float(required=True, allow_nan=False, validate=validate.Range(min=0))
    source = fields.String(required=True)

    @validates_schema
    def _ohlc(self, data: dict[str, Any], **_: Any) -> None:
        o, h, low, c = data["open"], data["high"], data["low"], data["close"]
        if h < max(o, c, low):
            raise ValidationError(f"high {h} is below max(open, close, low) = {max(o, c, low)}")
        if low > min(o, c):
            raise ValidationError(f"low {low} is above min(open, close) = {min(o, c)}")


_NUMBER_TYPES = frozenset({float, int})
_INF = math.inf


def fast_validate(record: Any) -> dict[str, Any] | None:
    """The same checks as BarSchema on the common shape (native numbers, ISO strings), returning the canonical
    record; None, never a verdict of its own, when anything is unusual, so the schema decides and words the
    reason."""
    if type(record) is not dict or record.keys() != _FIELD_SET:
        return None
    symbol, interval, source, ts = record["symbol"], record["interval"], record["source"], record["ts"]
    if type(symbol) is not str or type(source) is not str or type(ts) is not str:
        return None
    if interval not in _INTERVAL_SET or not SYMBOL.match(symbol):
        return None
    o, h, low, c, vol = record["open"], record["high"], record["low"], record["close"], record["volume"]
    if not (type(o) in _NUMBER_TYPES and type(h) in _NUMBER_TYPES and type(low) in _NUMBER_TYPES
            and type(c) in _NUMBER_TYPES and type(vol) in _NUMBER_TYPES):
        return None
    o, h, low, c, vol = float(o), float(h), float(low), float(c), float(vol)
    # Comparisons with NaN are false, so NaN falls through to the schema as well.
    if not (0 < o < _INF and 0 < c < _INF and 0 < low < _INF and 0 < h < _INF and 0 <= vol < _INF):
        return None
    if h < o or h < c or h < low or low > o or low > c:
        return None
    moment = _aware_utc(ts)
    if moment is None:
        return None
    return {"symbol": symbol, "interval": interval, "ts": moment, "open": o, "high": h, "low": low,
            "close": c, "volume": vol, "source": source}


@lru_cache(maxsize=65536)  # bars of many symbols share their timestamps
def _aware_utc(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None
    return moment.astimezone(UTC)


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    record["ts"] = record["ts"].astimezone(UTC)
    return record


@lru_cache(maxsize=65536)
def _iso(moment: datetime) -> str:
    return moment.isoformat()


def to_row(r: dict[str, Any]) -> list[Any]:
    return [r["symbol"], r["interval"], _iso(r["ts"]), r["open"], r["high"], r["low"], r["close"],
            r["volume"], r["source"]]


INTERVAL_LENGTH = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
                   "1h": timedelta(hours=1), "1d": timedelta(days=1)}


def bar_end(ts: datetime, interval: str) -> datetime:
    """A bar exists once its window closed (a daily bar: by the end of its session date, in UTC)."""
    return ts + INTERVAL_LENGTH.get(interval, timedelta(0))


def from_row(row: list[Any]) -> tuple[Any, ...]:
    return (row[0], row[1], datetime.fromisoformat(row[2]), *row[3:])


# ---------------------------------------------------------------------------------- quality checks
# Plausible-looking but doubtful bars (the schema already rejects impossible ones: high below low, negative
# volume, non-finite prices). History is the last stored bars of each symbol before the batch.


def _history(records: list[dict[str, Any]], ctx: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Each symbol's series (ts, close, volume): up to ``history`` stored bars before the batch, then the
    batch's own, in time order; cached for the batch's other checks."""
    if "bars_series" in ctx.cache:
        return ctx.cache["bars_series"]
    from sqlalchemy import select

    size = int(ctx.params.get("history", 60))
    by_symbol: dict[str, list[int]] = {}
    for index, r in enumerate(records):
        by_symbol.setdefault(r["symbol"], []).append(index)
    first = min((r["ts"] for r in records), default=None)
    stored: dict[str, list[tuple[datetime, float, float]]] = {}
    if first is not None and size and ctx.conn is not None:
        interval = records[0]["interval"]
        span = INTERVAL_LENGTH[interval] * size * (2 if interval == "1d" else 4)  # weekends, nights
        table, own = BARS.own_rows(ctx.pipe)  # a reference pipeline's history is its own provider's
        rows = ctx.conn.execute(select(table.c.symbol, table.c.ts, table.c.close, table.c.volume)
                                .where(table.c.symbol.in_(list(by_symbol)), table.c.interval == interval,
                                       table.c.ts < first, table.c.ts >= first - span, *own).order_by(table.c.ts))
        for symbol, ts, close, volume in rows:
            stored.setdefault(symbol, []).append((ts if ts.tzinfo else ts.replace(tzinfo=UTC), close, volume))
    series = {}
    for symbol, indices in by_symbol.items():
        own = sorted(((records[i]["ts"], records[i]["close"], records[i]["volume"], i) for i in indices),
                     key=lambda point: point[0])
        series[symbol] = [(ts, c, v, None) for ts, c, v in stored.get(symbol, [])[-size:]] + own
    ctx.cache["bars_series"] = series
    return series


def check_price_spike(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A close-to-close log return that is an outlier by its modified z-score over the symbol's recent
    returns; the bar after a spike (the return back) is not blamed."""
    from stockpulse.quality import robust_scale, robust_z

    threshold, minimum = float(ctx.params["threshold"]), int(ctx.params["min_history"])
    found = []
    log = math.log
    for points in _history(records, ctx).values():
        # (return, previous point, point) once per pair; non-positive closes have no return
        moves = [(log(cur[1] / prev[1]), prev, cur) for prev, cur in zip(points, points[1:], strict=False)
                 if prev[1] > 0 and cur[1] > 0]
        if len(moves) < minimum:
            continue
        centre, mad = robust_scale([m[0] for m in moves])
        if mad == 0:
            continue
        # |z| > threshold  <=>  |r - centre| > threshold * mad / 0.6745: no division per point
        limit, flagged_sign = threshold * mad / 0.6745, 0
        for r, prev, cur in moves:
            deviation = r - centre
            if abs(deviation) > limit and not (flagged_sign and (deviation > 0) != (flagged_sign > 0)):
                flagged_sign = 1 if deviation > 0 else -1
                if cur[3] is not None:
                    z = robust_z(r, (centre, mad)) or 0.0
                    found.append((cur[3], {"reason": f"close {cur[1]:g} is {math.exp(r) - 1:+.1%} from the "
                                                     f"previous {prev[1]:g} (robust z {z:.1f})",
                                           "previous_close": prev[1], "z": round(z, 2)}))
            else:
                flagged_sign = 0
    return found


def check_volume_spike(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """Volume far above the symbol's recent median (``factor`` times)."""
    from stockpulse.quality import median

    factor, minimum = float(ctx.params["factor"]), int(ctx.params["min_history"])
    found = []
    for points in _history(records, ctx).values():
        volumes = [p[2] for p in points if p[2] is not None]
        if len(volumes) < minimum:
            continue
        typical = median(volumes)
        for _ts, _close, volume, index in points:
            if index is not None and typical > 0 and volume is not None and volume > factor * typical:
                found.append((index, {"reason": f"volume {volume:g} is {volume / typical:.0f}x the recent median "
                                                f"{typical:g}", "median_volume": typical}))
    return found


def check_stale_close(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """The same close ``run`` bars in a row: a feed that stopped updating."""
    run = int(ctx.params["run"])
    found = []
    for points in _history(records, ctx).values():
        streak = 1
        for prev, cur in zip(points, points[1:], strict=False):
            streak = streak + 1 if cur[1] == prev[1] else 1
            if streak >= run and cur[3] is not None:
                found.append((cur[3], {"reason": f"close {cur[1]:g} unchanged for {streak} bars", "run": streak}))
    return found


def check_outside_session(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A bar stamped on a day (daily) or minute (intraday) its exchange calendar does not trade."""
    from stockpulse.pipeline.gaps import ALWAYS, expected_sessions, pipeline_calendar

    name = pipeline_calendar(ctx.pipe)
    if name in (ALWAYS, "none") or not records:
        return []
    found = []
    if records[0]["interval"] == "1d":
        days = [r["ts"].date() for r in records]
        sessions = set(expected_sessions(name, min(days), max(days)))
        for i, day in enumerate(days):
            if day not in sessions:
                found.append((i, {"reason": f"{day} is not a {name} session"}))
        return found
    from stockpulse.calendars import in_session

    for i, r in enumerate(records):
        if not in_session(name, r["ts"]):
            found.append((i, {"reason": f"{r['ts'].isoformat()} is outside {name}'s session"}))
    return found


def check_out_of_order(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A bar older than the symbol's previous one in the provider's own order."""
    last: dict[str, datetime] = {}
    found = []
    for i, r in enumerate(records):
        previous = last.get(r["symbol"])
        if previous is not None and r["ts"] < previous:
            found.append((i, {"reason": f"{r['ts'].isoformat()} came after {previous.isoformat()}"}))
        last[r["symbol"]] = r["ts"] if previous is None else max(previous, r["ts"])
    return found


def _quality_checks() -> tuple[Any, ...]:
    from stockpulse.quality import Check

    return (
        Check("price_spike", check_price_spike, "warn", {"threshold": 10.0, "min_history": 20, "history": 60},
              "close-to-close return an outlier by modified z-score over recent returns"),
        Check("volume_spike", check_volume_spike, "warn", {"factor": 20.0, "min_history": 20, "history": 60},
              "volume above factor x the recent median"),
        Check("stale_close", check_stale_close, "warn", {"run": 5, "history": 60},
              "the same close for run bars in a row"),
        Check("outside_session", check_outside_session, "warn", {},
              "a bar on a day or minute the exchange calendar does not trade"),
        Check("out_of_order", check_out_of_order, "warn", {}, "timestamps going backwards for a symbol"),
    )


BARS = DataType(
    name="bars",
    schema=BarSchema(),
    table=bars_table,
    key=("symbol", "interval", "ts"),
    columns=FIELDS,
    fast_validate=fast_validate,
    normalise=normalise,
    to_row=to_row,
    from_row=from_row,
    event_time=bar_end,
    quality_checks=_quality_checks(),
    reference_table=reference_bars,
    reference_key=("source", "symbol", "interval", "ts"),
)
