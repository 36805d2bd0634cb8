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
)
