"""Rejected records, kept as received with the reason, so nothing invalid vanishes silently."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stockpulse.datatypes.base import Rejected
from stockpulse.db.models import quarantine as quarantine_t
from stockpulse.errors import utcnow

log = logging.getLogger("stockpulse.quarantine")


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
    reasons: dict[str, int] = {}
    for item in rejected:
        reasons[item.reason] = reasons.get(item.reason, 0) + 1
    top = "; ".join(f"{n}x {reason[:200]}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    log.warning("quarantined %d records: %s", len(rows), top,
                extra={"run_id": run_id, "batch_no": batch_no, "pipeline": pipeline, "data_type": data_type,
                       "provider": provider, "records_rejected": len(rows)})
    return len(rows)


def list_quarantined(*, pipeline: str | None = None, reason: str | None = None, limit: int = 100) -> list[Any]:
    from sqlalchemy import select

    from stockpulse.db.engine import get_engine

    query = select(quarantine_t).order_by(quarantine_t.c.id.desc()).limit(limit)
    if pipeline:
        query = query.where(quarantine_t.c.pipeline == pipeline)
    if reason:
        query = query.where(quarantine_t.c.reason.contains(reason))
    with get_engine().connect() as conn:
        return conn.execute(query).all()


def get_quarantined(row_id: int) -> Any:
    from sqlalchemy import select

    from stockpulse.db.engine import get_engine

    with get_engine().connect() as conn:
        return conn.execute(select(quarantine_t).where(quarantine_t.c.id == row_id)).one_or_none()


def reprocess(*, pipeline: str | None = None) -> dict[str, int]:
    """Validate quarantined records again with the current schemas; load and release those that pass."""
    from sqlalchemy import delete, select

    from stockpulse.config import get_settings
    from stockpulse.datatypes import get_data_type
    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import watermarks as watermarks_t
    from stockpulse.pipeline.loader import latest_per_symbol, raise_watermarks
    from stockpulse.quality import run_checks

    query = select(quarantine_t).order_by(quarantine_t.c.id)
    if pipeline:
        query = query.where(quarantine_t.c.pipeline == pipeline)
    counts = {"checked": 0, "loaded": 0, "still_invalid": 0}
    with get_engine().begin() as conn:
        rows = conn.execute(query).all()
        by_type: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        for row in rows:
            counts["checked"] += 1
            data_type = get_data_type(row.data_type)
            canonical, reason = data_type.validate_one(orjson.loads(row.record))
            if canonical is None:
                counts["still_invalid"] += 1
                if reason and reason != row.reason:
                    conn.execute(quarantine_t.update().where(quarantine_t.c.id == row.id).values(reason=reason[:4000]))
                continue
            by_type.setdefault((row.data_type, row.pipeline), []).append((row.id, canonical))
        settings = get_settings()
        for (type_name, pipe_name), items in by_type.items():
            data_type = get_data_type(type_name)
            pipe = settings.pipelines.get(pipe_name)
            if pipe is None:  # removed from config: no target, no checks to apply; the records wait
                counts["still_invalid"] += len(items)
                continue
            # The pipeline's error-severity quality checks still apply (downgrade one to release its records).
            checked = run_checks(data_type.quality_checks, [c for _, c in items], pipe, conn,
                                 data_type.key_of or itemgetter(*data_type.key), first_record_no=0)
            for refused in checked.rejected:
                counts["still_invalid"] += 1
                conn.execute(quarantine_t.update().where(quarantine_t.c.id == items[refused.record_no][0])
                             .values(reason=refused.reason[:4000]))
            held = {r.record_no for r in checked.rejected}
            released = [item for i, item in enumerate(items) if i not in held]
            if not released:
                continue
            loaded = [data_type.from_row(r) for r in data_type.rows(checked.valid)]
            data_type.load_rows(conn, pipe, loaded)
            raise_watermarks(conn, watermarks_t, pipe_name, data_type.watermark_points(loaded)
                             if data_type.watermark_points else latest_per_symbol(loaded, data_type.columns))
            conn.execute(delete(quarantine_t).where(quarantine_t.c.id.in_([i for i, _ in released])))
            counts["loaded"] += len(released)
    return counts


def purge(*, pipeline: str | None = None, older_than_s: float | None = None, row_id: int | None = None) -> int:
    from datetime import timedelta

    from sqlalchemy import delete

    from stockpulse.db.engine import get_engine

    stmt = delete(quarantine_t)
    if row_id is not None:
        stmt = stmt.where(quarantine_t.c.id == row_id)
    if pipeline:
        stmt = stmt.where(quarantine_t.c.pipeline == pipeline)
    if older_than_s is not None:
        stmt = stmt.where(quarantine_t.c.created_at < utcnow() - timedelta(seconds=older_than_s))
    with get_engine().begin() as conn:
        return conn.execute(stmt).rowcount
