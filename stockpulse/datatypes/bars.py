"""OHLCV bars: schema, fast validation path, transport rows.

A daily bar's ``ts`` is its session date at 00:00 UTC; intraday bars carry the UTC start of their window.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
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


def fast_validate(record: Any) -> dict[str, Any] | None:
    """The same checks as BarSchema on the common shape (native numbers, ISO strings); returns None, never a
    verdict of its own, when anything is unusual, so the schema decides and words the reason."""
    if type(record) is not dict or record.keys() != _FIELD_SET:
        return None
    symbol, interval, source = record["symbol"], record["interval"], record["source"]
    if type(symbol) is not str or type(source) is not str or type(interval) is not str:
        return None
    if interval not in _INTERVAL_SET or not SYMBOL.match(symbol):
        return None
    ts = record["ts"]
    if type(ts) is not str:
        return None
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None
    values = []
    for name in ("open", "high", "low", "close", "volume"):
        v = record[name]
        if type(v) is not float and type(v) is not int:
            return None
        v = float(v)
        if not math.isfinite(v):
            return None
        values.append(v)
    o, h, low, c, vol = values
    if o <= 0 or h <= 0 or low <= 0 or c <= 0 or vol < 0:
        return None
    if h < max(o, c, low) or low > min(o, c):
        return None
    return {"symbol": symbol, "interval": interval, "ts": moment, "open": o, "high": h, "low": low,
            "close": c, "volume": vol, "source": source}


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    record["ts"] = record["ts"].astimezone(UTC)
    return record


def to_row(r: dict[str, Any]) -> list[Any]:
    return [r["symbol"], r["interval"], r["ts"].isoformat(), r["open"], r["high"], r["low"], r["close"],
            r["volume"], r["source"]]


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
)
