"""Idempotent bulk upsert on a table's natural key, the fastest correct way per database.

PostgreSQL: when no stored row falls inside the batch's key range (a first load), binary COPY straight
into the table, inside a savepoint in case a concurrent load got there first; otherwise binary COPY into a
temporary stage, then one INSERT ... ON CONFLICT DO UPDATE whose update is guarded with IS DISTINCT FROM,
so re-loading unchanged rows writes nothing. SQLite: executemany of the same upsert in the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Float, Integer, String, Table, Text, func, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stockpulse.db.models import UTCDateTime
from stockpulse.errors import utcnow

PG_TYPES = {String: "text", Text: "text", Float: "float8", Integer: "int4", UTCDateTime: "timestamptz"}


def _pg_type(column: Any) -> str:
    for sa_type, name in PG_TYPES.items():
        if isinstance(column.type, sa_type):
            return name
    raise TypeError(f"no COPY type for column {column.name} ({column.type!r})")


def upsert(conn: Connection, table: Table, columns: Sequence[str], key: Sequence[str],
           rows: Sequence[Sequence[Any]], *, stamp_column: str | None = "ingested_at") -> int:
    """Insert or update ``rows`` (tuples in ``columns`` order); returns rows inserted or changed."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        return _upsert_postgres(conn, table, columns, key, rows, stamp_column)
    return _upsert_generic(conn, table, columns, key, rows, stamp_column)


def _key_range_is_empty(conn: Connection, table: Table, columns: Sequence[str], key: Sequence[str],
                        rows: Sequence[Sequence[Any]]) -> bool:
    """No stored row inside the bounding box of the batch's keys (conservative: a hit may be no conflict)."""
    from sqlalchemy import and_, select

    bounds = []
    for name in key:
        i = columns.index(name)
        values = [row[i] for row in rows]
        bounds.append(table.c[name].between(min(values), max(values)))
    return conn.execute(select(1).select_from(table).where(and_(*bounds)).limit(1)).first() is None


def _copy_direct(raw: Any, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                 stamp_column: str | None) -> int:
    import psycopg

    names = [*columns, stamp_column] if stamp_column else list(columns)
    now = utcnow()
    try:
        with raw.transaction(), raw.cursor() as cur:  # a savepoint inside the caller's transaction
            quoted = ", ".join(f'"{c}"' for c in names)
            with cur.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN (FORMAT BINARY)') as copy:
                copy.set_types([_pg_type(table.c[c]) for c in names])
                if stamp_column:
                    for row in rows:
                        copy.write_row((*row, now))
                else:
                    for row in rows:
                        copy.write_row(row)
        return len(rows)
    except psycopg.errors.UniqueViolation:
        return -1  # a concurrent load stored some of these keys first: upsert instead


def _upsert_postgres(conn: Connection, table: Table, columns: Sequence[str], key: Sequence[str],
                     rows: Sequence[Sequence[Any]], stamp_column: str | None) -> int:
    raw = conn.connection.driver_connection  # psycopg 3, inside the caller's transaction
    if _key_range_is_empty(conn, table, columns, key, rows):
        written = _copy_direct(raw, table, columns, rows, stamp_column)
        if written >= 0:
            return written
    stage = f"_stage_{table.name}"
    quoted = ", ".join(f'"{c}"' for c in columns)
    with raw.cursor() as cur:
        cur.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" AS SELECT {quoted} FROM "{table.name}" WITH NO DATA')
        cur.execute(f'TRUNCATE "{stage}"')
        with cur.copy(f'COPY "{stage}" ({quoted}) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types([_pg_type(table.c[c]) for c in columns])
            for row in rows:
                copy.write_row(row)
        updates = [c for c in columns if c not in key]
        insert_cols = quoted + (f', "{stamp_column}"' if stamp_column else "")
        select_cols = quoted + (", now()" if stamp_column else "")
        set_clause = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in updates)
        if stamp_column:
            set_clause += f', "{stamp_column}" = EXCLUDED."{stamp_column}"'
        guard = (f"({', '.join(f't.{chr(34)}{c}{chr(34)}' for c in updates)}) IS DISTINCT FROM "
                 f"({', '.join(f'EXCLUDED.{chr(34)}{c}{chr(34)}' for c in updates)})")
        conflict = ", ".join(f'"{c}"' for c in key)
        cur.execute(
            f'INSERT INTO "{table.name}" AS t ({insert_cols}) SELECT {select_cols} FROM "{stage}" '
            f"ON CONFLICT ({conflict}) DO UPDATE SET {set_clause} WHERE {guard}"
        )
        return cur.rowcount


def _upsert_generic(conn: Connection, table: Table, columns: Sequence[str], key: Sequence[str],
                    rows: Sequence[Sequence[Any]], stamp_column: str | None) -> int:
    now = utcnow()
    params = [dict(zip(columns, row, strict=True)) for row in rows]
    if stamp_column:
        for p in params:
            p[stamp_column] = now
    stmt = sqlite_insert(table) if conn.dialect.name == "sqlite" else pg_insert(table)
    updates = [c for c in columns if c not in key]
    set_ = {c: stmt.excluded[c] for c in updates}
    if stamp_column:
        set_[stamp_column] = stmt.excluded[stamp_column]
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key), set_=set_,
        where=tuple_(*[table.c[c] for c in updates]).is_distinct_from(tuple_(*[stmt.excluded[c] for c in updates]))
        if conn.dialect.name != "sqlite" else _sqlite_changed(table, stmt, updates),
    )
    result = conn.execute(stmt, params)
    return max(result.rowcount, 0)


def _sqlite_changed(table: Table, stmt: Any, updates: Sequence[str]) -> Any:
    from sqlalchemy import or_

    return or_(*[table.c[c].is_distinct_from(stmt.excluded[c]) for c in updates])


def raise_watermarks(conn: Connection, watermarks: Table, pipeline: str, latest: dict[str, Any]) -> None:
    """Move each symbol's watermark forward to ``latest[symbol]``; never backwards."""
    if not latest:
        return
    now = utcnow()
    params = [{"pipeline": pipeline, "symbol": s, "last_ts": ts, "updated_at": now} for s, ts in latest.items()]
    if conn.dialect.name == "postgresql":
        stmt = pg_insert(watermarks)
        newest = func.greatest(watermarks.c.last_ts, stmt.excluded.last_ts)
    else:
        stmt = sqlite_insert(watermarks)
        newest = func.max(watermarks.c.last_ts, stmt.excluded.last_ts)
    stmt = stmt.on_conflict_do_update(index_elements=["pipeline", "symbol"],
                                      set_={"last_ts": newest, "updated_at": stmt.excluded.updated_at})
    conn.execute(stmt, params)


def latest_per_symbol(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> dict[str, Any]:
    """The newest ``ts`` per symbol among rows (for watermarks)."""
    ts_at, sym_at = columns.index("ts"), columns.index("symbol")
    latest: dict[str, Any] = {}
    for row in rows:
        if row[sym_at] not in latest or row[ts_at] > latest[row[sym_at]]:
            latest[row[sym_at]] = row[ts_at]
    return latest
