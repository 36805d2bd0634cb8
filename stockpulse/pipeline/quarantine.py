"""Rejected records, kept as received with the reason, so nothing invalid vanishes silently."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stockpulse.datatypes.base import Rejected
from stockpulse.db.models import quarantine as quarantine_t
from stockpulse.errors import utcnow


def _as_text(record: Any) -> str:
    return orjson.dumps(record, default=repr, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def quarantine_records(conn: Connection, rejected: Sequence[Rejected], *, pipeline: str, run_id: str,
                       batch_no: int, data_type: str, provider: str) -> int:
    if not rejected:
        return 0
    now = utcnow()
    rows = []
    for item in rejected:
        symbol = item.record.get("symbol") if isinstance(item.record, dict) else None
        rows.append({"pipeline": pipeline, "run_id": run_id, "batch_no": batch_no, "record_no": item.record_no,
                     "data_type": data_type, "provider": provider,
                     "symbol": symbol if isinstance(symbol, str) else None,
                     "record": _as_text(item.record), "reason": item.reason[:4000], "created_at": now})
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(quarantine_t).on_conflict_do_nothing(index_elements=["run_id", "batch_no", "record_no"])
    conn.execute(stmt, rows)
    return len(rows)
