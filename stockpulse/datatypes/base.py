"""The data-type contract and the validation loop every data type shares.

marshmallow schemas are the declared contract and the source of every rejection reason. A data type may
add a fast path that recognises plainly valid records; anything it is not sure of goes to the schema, so
verdicts and reasons are the schema's by construction (and a property test checks the fast path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from marshmallow import Schema, ValidationError
from sqlalchemy import Table

from stockpulse.errors import ConfigError


def reason_from_messages(messages: Any) -> str:
    """marshmallow's error dict as one stable line: 'field: message; other: message'."""
    if isinstance(messages, dict):
        parts = []
        for key in sorted(messages, key=str):
            text = reason_from_messages(messages[key])
            parts.append(text if key == "_schema" else f"{key}: {text}")
        return "; ".join(parts)
    if isinstance(messages, list):
        return " ".join(reason_from_messages(m) for m in messages)
    return str(messages)


@dataclass
class Rejected:
    record_no: int
    record: Any
    reason: str


@dataclass
class Validated:
    valid: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class DataType:
    name: str
    schema: Schema
    table: Table
    key: tuple[str, ...]
    # Columns in transport-row order (the rows that travel from transform to load).
    columns: tuple[str, ...]
    # Returns the canonical record for a plainly valid record, None when the schema must decide.
    fast_validate: Callable[[Any], dict[str, Any] | None] | None = None
    # Brings a record loaded by the schema to canonical form (e.g. timestamps to UTC).
    normalise: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: r
    to_row: Callable[[dict[str, Any]], list[Any]] | None = None
    from_row: Callable[[list[Any]], tuple[Any, ...]] | None = None
    # When the provider could first have published a record stamped ``ts`` (for ingestion latency).
    event_time: Callable[[datetime, str], datetime] = lambda ts, interval: ts
    # The natural key of a canonical record, when not simply its ``key`` fields (records of several kinds).
    key_of: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None
    # Two records with the same key in one payload: merged into the first when set, else the second is
    # rejected as a duplicate.
    merge: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    # A loader of its own (several tables); the default is the bulk upsert of ``table`` on ``key``.
    load: Callable[..., int] | None = None
    # The newest point per symbol among loaded rows (watermarks); the default reads ``symbol`` and ``ts``.
    watermark_points: Callable[[list[tuple[Any, ...]]], dict[str, datetime]] | None = None
    # Whether every requested symbol should yield records (bars) or may have none (news).
    every_symbol_has_data: bool = True
    # Data-quality checks run on the valid records of each batch (stockpulse/quality.py).
    quality_checks: tuple[Any, ...] = ()
    # Where a pipeline marked ``options.reference`` loads: a second provider's records kept per source and
    # compared with ``table`` (stockpulse/pipeline/reconcile.py), never served in its place.
    reference_table: Table | None = None
    reference_key: tuple[str, ...] = ()

    def target(self, pipe: Any) -> tuple[Table, tuple[str, ...]]:
        """(table, key) the pipeline's rows are upserted into."""
        if pipe.options.get("reference"):
            if self.reference_table is None:
                raise ConfigError(f"pipelines.{pipe.name}.options.reference: {self.name} has no reference table "
                                  "(only bars are reconciled)")
            return self.reference_table, self.reference_key
        return self.table, self.key

    def own_rows(self, pipe: Any) -> tuple[Table, list[Any]]:
        """(table, conditions) selecting the pipeline's own stored rows: a reference table holds every
        reference provider's, told apart by ``source`` (the provider's name)."""
        table, _key = self.target(pipe)
        return table, [table.c.source == pipe.provider] if table is self.reference_table else []

    def load_rows(self, conn: Any, pipe: Any, rows: list[tuple[Any, ...]]) -> int:
        """Upsert transport rows for ``pipe`` (its own loader, or the bulk upsert of its target table)."""
        from stockpulse.observability import tracing
        from stockpulse.pipeline.loader import upsert

        table, key = self.target(pipe)
        # A span for the write as a whole: the bulk path (COPY on PostgreSQL) bypasses SQLAlchemy's events.
        with tracing.span("db.load", **{"db.collection.name": table.name, "stockpulse.rows": len(rows),
                                        "stockpulse.data_type": self.name}):
            if self.load is not None:
                return self.load(conn, rows, pipeline=pipe.name)
            return upsert(conn, table, self.columns, key, rows)

    def validate_one(self, record: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(canonical record, None) or (None, reason)."""
        if self.fast_validate is not None:
            fast = self.fast_validate(record)
            if fast is not None:
                return fast, None
        if not isinstance(record, dict):
            return None, f"record is a {type(record).__name__}, not an object"
        try:
            return self.normalise(self.schema.load(record)), None
        except ValidationError as exc:
            return None, reason_from_messages(exc.messages)

    def validate(self, records: Iterable[Any]) -> Validated:
        """Validate record by record (never ``many=True``: marshmallow skips schema-level checks for the
        whole batch once one record has a field error), then reject duplicates of the natural key."""
        out = Validated()
        seen: dict[tuple, int] = {}
        key_of = self.key_of or itemgetter(*self.key)
        fast, valid = self.fast_validate, out.valid
        for record_no, record in enumerate(records):
            canonical = fast(record) if fast is not None else None
            if canonical is None:
                canonical, reason = self.validate_one(record)
                if canonical is None:
                    out.rejected.append(Rejected(record_no, record, reason or "invalid"))
                    continue
            key = key_of(canonical)
            if key in seen:
                if self.merge is not None:
                    valid[seen[key]] = self.merge(valid[seen[key]], canonical)
                    continue
                out.rejected.append(Rejected(record_no, record, "duplicate of an earlier record with the same "
                                             f"key ({', '.join(self.key)}) in the same payload"))
                continue
            seen[key] = len(valid)
            valid.append(canonical)
        return out

    def rows(self, records: list[dict[str, Any]]) -> list[list[Any]]:
        if self.to_row is not None:
            return [self.to_row(r) for r in records]
        return [[r[c] for c in self.columns] for r in records]
