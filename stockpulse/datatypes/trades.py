"""Trades (ticks) from the real-time streams: schema, transport rows, and a fast validation path.

``ts`` keeps microseconds. ``trade_id`` is the provider's own id where it sends one; otherwise the stream
adapter derives it from the trade (see the provider module), so a replayed frame loads nothing twice.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
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


# ---------------------------------------------------------------------------------- quality checks
# The schema rejects impossible ticks (non-positive or non-finite prices, negative sizes); these flag
# plausible-looking ones that are probably wrong: a bad print, a clock that is off, a zero-size update.


def _recent_prices(records: list[dict[str, Any]], ctx: Any) -> dict[tuple[str, str], list[tuple[datetime, float]]]:
    """Per (source, symbol), the trades before the batch that the band is measured from: kept in the
    caller's ``state`` across a stream's batches, read from the database for a symbol seen the first time."""
    recent = ctx.state.setdefault("trades_recent", {})
    window = int(ctx.params["window"])
    firsts: dict[tuple[str, str], datetime] = {}
    for r in records:
        key = (r["source"], r["symbol"])
        if key not in recent and (key not in firsts or r["ts"] < firsts[key]):
            firsts[key] = r["ts"]
    if firsts and ctx.conn is not None:
        from sqlalchemy import select

        for (source, symbol), first in firsts.items():  # once per symbol and consumer: a shard's few symbols
            t = trades_table.c
            rows = ctx.conn.execute(select(t.ts, t.price).where(t.source == source, t.symbol == symbol, t.ts < first)
                                    .order_by(t.ts.desc()).limit(window)).all()
            recent[(source, symbol)] = [(ts if ts.tzinfo else ts.replace(tzinfo=UTC), p) for ts, p in reversed(rows)]
    return recent


def check_price_band(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A trade more than ``band_pct`` away from the median of the symbol's last ``window`` trades. A single
    bad print does not move the median, so the trades after it are judged against the real level; a real
    jump becomes the new level once it is half the window. A reference older than ``max_gap_s`` (a halt,
    the overnight close) starts afresh instead of blaming the first trade after it."""
    from stockpulse.quality import median

    band, window = float(ctx.params["band_pct"]) / 100, int(ctx.params["window"])
    max_gap = timedelta(seconds=float(ctx.params["max_gap_s"]))
    recent = _recent_prices(records, ctx)
    found = []
    for i in sorted(range(len(records)), key=lambda i: records[i]["ts"]):
        r = records[i]
        series = recent.setdefault((r["source"], r["symbol"]), [])
        if series and r["ts"] - series[-1][0] > max_gap:
            series.clear()
        if len(series) >= min(3, window):
            reference = median([p for _, p in series])
            move = r["price"] / reference - 1
            if abs(move) > band:
                found.append((i, {"reason": f"price {r['price']:g} is {move:+.1%} from the median {reference:g} of "
                                            f"the last {len(series)} trades", "reference": reference}))
        series.append((r["ts"], r["price"]))
        del series[:-window]
    return found


def check_trade_time(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A timestamp ahead of the clock by more than ``future_s``, or too far in the past: before the window a
    REST run asked for, or (a live stream) older than ``max_age_s``."""
    now = ctx.now
    ahead = now + timedelta(seconds=float(ctx.params["future_s"]))
    if ctx.requested is not None:
        floor, why = ctx.requested[0], f"before the requested window starting {ctx.requested[0].isoformat()}"
    else:
        floor = now - timedelta(seconds=float(ctx.params["max_age_s"]))
        why = f"more than {float(ctx.params['max_age_s']):g}s old on a live stream"
    found = []
    for i, r in enumerate(records):
        if r["ts"] > ahead:
            found.append((i, {"reason": f"{r['ts'].isoformat()} is {(r['ts'] - now).total_seconds():.0f}s in the "
                                        "future"}))
        elif r["ts"] < floor:
            found.append((i, {"reason": f"{r['ts'].isoformat()} is {why}"}))
    return found


def check_size(records: list[dict[str, Any]], ctx: Any) -> list[tuple[int, dict[str, Any]]]:
    """A trade of size zero (the schema already refuses a negative one): a quote or correction sent as a
    trade, which would count as volume that never traded."""
    return [(i, {"reason": f"size {r['size']:g} is not positive"}) for i, r in enumerate(records) if r["size"] <= 0]


def _quality_checks() -> tuple[Any, ...]:
    from stockpulse.quality import Check

    return (
        Check("price_band", check_price_band, "warn", {"band_pct": 10.0, "window": 5, "max_gap_s": 900.0},
              "a trade more than band_pct from the median of the symbol's last trades"),
        Check("trade_time", check_trade_time, "warn", {"future_s": 60.0, "max_age_s": 3600.0},
              "a timestamp in the future, or far in the past"),
        Check("size", check_size, "warn", {}, "a trade of size zero"),
    )


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
    quality_checks=_quality_checks(),
)
