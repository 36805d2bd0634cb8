"""Trades (ticks) from the real-time streams: schema, transport rows, and a fast validation path.

``ts`` keeps microseconds. ``trade_id`` is the provider's own id where it sends one; otherwise the stream
adapter derives it from the trade (see the provider module), so a replayed frame loads nothing twice.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from stockpulse.datatypes.bars import SYMBOL, _aware_utc
from stockpulse.datatypes.base import DataType
from stockpulse.db.models import trades as trades_table

FIELDS = ("source", "symbol", "ts", "trade_id", "price", "size", "conditions", "exchange")
_FIELD_SET = frozenset(FIELDS)


class TradeSchema(Schema):
    class Meta:
        unknown = RAISE

    source = fields.String(required=True)
    symbol = fields.String(required=True, validate=validate.Regexp(SYMBOL, error="invalid symbol"))
    ts = fields.AwareDateTime(required=True)
    trade_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    price = fields.Float(required=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))
    size = fields.Float(required=True, allow_nan=False, validate=validate.Range(min=0))
    conditions = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=64))
    exchange = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=16))


def fast_validate(record: Any) -> dict[str, Any] | None:
    """TradeSchema's checks for the common shape; None (the schema decides) whenever anything is unusual."""
    if type(record) is not dict or record.keys() != _FIELD_SET:
        return None
    price, size, ts = record["price"], record["size"], record["ts"]
    if type(price) not in (float, int) or type(size) not in (float, int) or type(ts) is not str:
        return None
    if not (0 < price < math.inf and 0 <= size < math.inf):
        return None
    symbol, trade_id = record["symbol"], record["trade_id"]
    if type(symbol) is not str or not SYMBOL.match(symbol) or type(trade_id) is not str or not 0 < len(trade_id) <= 64:
        return None
    if type(record["source"]) is not str:
        return None
    for optional, limit in (("conditions", 64), ("exchange", 16)):
        value = record[optional]
        if value is not None and (type(value) is not str or len(value) > limit):
            return None
    moment = _aware_utc(ts)
    if moment is None:
        return None
    return {**record, "price": float(price), "size": float(size), "ts": moment}


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    record["ts"] = record["ts"].astimezone(UTC)
    return record


def to_row(r: dict[str, Any]) -> list[Any]:
    return [r["source"], r["symbol"], r["ts"].isoformat(), r["trade_id"], r["price"], r["size"], r["conditions"],
            r["exchange"]]


def from_row(row: list[Any]) -> tuple[Any, ...]:
    return (row[0], row[1], datetime.fromisoformat(row[2]), *row[3:])


TRADES = DataType(
    name="trades",
    schema=TradeSchema(),
    table=trades_table,
    key=("source", "symbol", "ts", "trade_id"),
    columns=FIELDS,
    fast_validate=fast_validate,
    normalise=normalise,
    to_row=to_row,
    from_row=from_row,
    every_symbol_has_data=False,
)
