from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from stockpulse.datatypes.bars import BARS
from stockpulse.db.engine import get_engine
from stockpulse.db.models import bars, watermarks
from stockpulse.pipeline.loader import raise_watermarks, upsert


def rows(n: int, close: float = 10.0) -> list[tuple]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return [("AAPL", "1d", start + timedelta(days=i), 10.0, 11.0, 9.0, close, 100.0, "sim") for i in range(n)]


def test_upsert_is_idempotent_and_updates_changed_rows(database: str) -> None:
    engine = get_engine()
    with engine.begin() as conn:
        assert upsert(conn, bars, BARS.columns, BARS.key, rows(50)) == 50
    with engine.begin() as conn:
        assert upsert(conn, bars, BARS.columns, BARS.key, rows(50)) == 0  # unchanged: nothing written
    changed = rows(50)
    changed[7] = (*changed[7][:6], 10.5, *changed[7][7:])
    with engine.begin() as conn:
        assert upsert(conn, bars, BARS.columns, BARS.key, changed) == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(bars)).scalar() == 50
        got = conn.execute(select(bars.c.close, bars.c.ts).where(bars.c.ts == changed[7][2])).one()
    assert got.close == 10.5 and got.ts == changed[7][2] and got.ts.tzinfo is not None


def test_watermarks_only_move_forward(database: str) -> None:
    early, late = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
    with get_engine().begin() as conn:
        raise_watermarks(conn, watermarks, "p", {"AAPL": late})
    with get_engine().begin() as conn:
        raise_watermarks(conn, watermarks, "p", {"AAPL": early, "MSFT": early})
    with get_engine().connect() as conn:
        marks = dict(conn.execute(select(watermarks.c.symbol, watermarks.c.last_ts)).all())
    assert marks == {"AAPL": late, "MSFT": early}


def test_rolled_back_load_leaves_nothing(database: str) -> None:
    engine = get_engine()
    try:
        with engine.begin() as conn:
            upsert(conn, bars, BARS.columns, BARS.key, rows(10))
            raise RuntimeError("worker died")
    except RuntimeError:
        pass
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(bars)).scalar() == 0


def test_direct_copy_falls_back_to_upsert_when_a_concurrent_load_won(database: str) -> None:
    if not database.startswith("postgresql"):
        return  # the direct COPY path is PostgreSQL's
    from stockpulse.pipeline.loader import _copy_direct, _upsert_postgres

    engine = get_engine()
    with engine.begin() as conn:
        upsert(conn, bars, BARS.columns, BARS.key, rows(1))  # as if another load committed row 0 first
        raw = conn.connection.driver_connection
        assert _copy_direct(raw, bars, BARS.columns, rows(5), "ingested_at") == -1  # savepoint rolled back
        assert _upsert_postgres(conn, bars, BARS.columns, BARS.key, rows(5), "ingested_at") == 4
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(bars)).scalar() == 5
