from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from stockpulse.db.engine import get_engine
from stockpulse.db.migrate import downgrade, upgrade
from stockpulse.db.models import metadata


def test_migrations_match_the_models(database: str) -> None:
    with get_engine().connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    # Type-level differences (UTCDateTime vs DateTime) are not schema changes.
    assert [d for d in diffs if d[0] not in ("modify_type",)] == []


def test_downgrade_and_upgrade_round_trip(database: str) -> None:
    downgrade(database)
    assert set(inspect(get_engine()).get_table_names()) <= {"alembic_version"}
    upgrade(database)
    assert {"bars", "pipeline_runs", "pipeline_run_batches", "watermarks", "quarantine"} <= set(
        inspect(get_engine()).get_table_names())


def test_sqlite_runs_in_wal_mode(database: str) -> None:
    if not database.startswith("sqlite"):
        return
    with get_engine().connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
