"""Data-type registry: each data type brings its schema, validation, transport rows and loader."""

from __future__ import annotations

from stockpulse.datatypes.bars import BARS
from stockpulse.datatypes.base import DataType
from stockpulse.datatypes.fundamentals import FUNDAMENTALS
from stockpulse.datatypes.news import NEWS
from stockpulse.datatypes.trades import TRADES

DATA_TYPES: dict[str, DataType] = {dt.name: dt for dt in (BARS, NEWS, FUNDAMENTALS, TRADES)}


def get_data_type(name: str) -> DataType:
    from stockpulse.errors import PermanentError

    try:
        return DATA_TYPES[name]
    except KeyError:
        raise PermanentError(f"data type {name!r} is not implemented yet "
                             f"(available: {', '.join(sorted(DATA_TYPES))})") from None


__all__ = ["DATA_TYPES", "DataType", "get_data_type"]
