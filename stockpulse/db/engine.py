"""Engines: one per database URL per process, with SQLite set up for concurrent workers."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (the COPY loader needs it)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def get_engine(url: str | None = None) -> Engine:
    """A cached engine; a forked worker child gets its own (pools must not cross a fork)."""
    if url is None:
        from stockpulse.config import get_settings

        url = get_settings().database_url
    url = normalise_url(url)
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            from stockpulse.observability.metrics import instrument_pool

            engine = _create(url)
            instrument_pool(engine)
            _engines[key] = engine
        return engine


def _create(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": 60})
        _setup_sqlite(engine)
        return engine
    # sqlalchemy.create_engine looked up at call time: with tracing on, the instrumented one.
    return sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800)


def _setup_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN; writers then fail with "database is locked"
    # instead of waiting. Take the write lock up front (BEGIN IMMEDIATE) and let busy_timeout queue them.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
