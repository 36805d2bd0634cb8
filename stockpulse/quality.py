"""Data-quality checks in the transform stage: declared per data type, configured per pipeline.

A check looks at the batch's valid records (with recent history from the database where it needs it) and
names the records it doubts. Its severity decides: ``error`` quarantines the record with the check's
reason, ``warn`` loads it; either way the finding is stored in ``data_quality_findings`` and counted in
``stockpulse_quality_findings_total``. ``pipelines.<name>.options.quality.<check>`` overrides a check's
``severity`` (``error``, ``warn``, ``off``) and parameters. ``stockpulse quality`` lists findings.

Adding a check: a function ``(records, context) -> [(record index, details)]`` and a ``Check`` in its data
type's module (``QUALITY_CHECKS``), listed in the data type's ``quality_checks``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from stockpulse.config import PipelineSettings
from stockpulse.errors import ConfigError, utcnow

if TYPE_CHECKING:  # data types declare their checks with this module: import theirs lazily
    from stockpulse.datatypes.base import Rejected

log = logging.getLogger("stockpulse.quality")
SEVERITIES = ("error", "warn", "off")


@dataclass
class CheckContext:
    pipe: PipelineSettings
    params: dict[str, Any]
    conn: Connection | None  # for history (the last stored records before the batch); None: the batch alone
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the checks of one batch
    # Kept by the caller across batches (a stream consumer's recent trades); a fresh dict per batch otherwise.
    state: dict[str, Any] = field(default_factory=dict)
    now: datetime = field(default_factory=utcnow)
    # The [start, end] a REST run asked for; None for a live stream.
    requested: tuple[datetime, datetime] | None = None


CheckFn = Callable[[list[dict[str, Any]], CheckContext], Iterable[tuple[int, dict[str, Any]]]]


@dataclass(frozen=True)
class Check:
    name: str
    run: CheckFn
    severity: str = "warn"
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Finding:
    check: str
    severity: str
    index: int  # into the batch's valid records
    symbol: str | None
    record_key: str
    details: dict[str, Any]


@dataclass
class QualityResult:
    valid: list[dict[str, Any]]
    rejected: list[Rejected]
    findings: list[Finding]


def configured(checks: tuple[Check, ...], pipe: PipelineSettings) -> list[tuple[Check, str, dict[str, Any]]]:
    """Each check with the pipeline's severity and parameters; a misspelt check or severity is an error."""
    overrides = dict(pipe.options.get("quality") or {})
    known = {c.name for c in checks}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"pipelines.{pipe.name}.options.quality: unknown check {unknown[0]!r} "
                          f"(known: {', '.join(sorted(known))})")
    out = []
    for check in checks:
        path = f"pipelines.{pipe.name}.options.quality.{check.name}"
        override = dict(overrides.get(check.name) or {})
        severity = override.pop("severity", check.severity)
        # YAML reads a bare `off` (or `no`) as false: what the operator wrote is "off".
        severity = "off" if severity is False else str(severity)
        if severity not in SEVERITIES:
            raise ConfigError(f"{path}.severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
        params = {name: _parameter(f"{path}.{name}", check, name, value) for name, value in override.items()}
        if severity != "off":
            out.append((check, severity, {**check.params, **params}))
    return out


def _parameter(path: str, check: Check, name: str, value: Any) -> Any:
    """A check's parameter as the type of its default; a misspelt name or a wrong type is an error."""
    if name not in check.params:
        known = ", ".join(["severity", *sorted(check.params)])
        raise ConfigError(f"{path}: {check.name} has no parameter {name!r} (it takes: {known})")
    default = check.params[name]
    if isinstance(default, (int, float)) and not isinstance(value, bool) and isinstance(value, (int, float)):
        if isinstance(default, float) or value == int(value):
            return type(default)(value)
    elif isinstance(default, str) and isinstance(value, str):
        return value
    kind = "a whole number" if isinstance(default, int) else "a number" if isinstance(default, float) else "text"
    raise ConfigError(f"{path}: {value!r} is not {kind} (default {default!r})")


def check_config(pipelines: Any) -> list[str]:
    """Every pipeline's quality options against its data type's checks (``stockpulse config check``)."""
    from stockpulse.datatypes import get_data_type

    problems = []
    for pipe in pipelines:
        try:
            configured(get_data_type(pipe.data_type).quality_checks, pipe)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def run_checks(checks: tuple[Check, ...], records: list[dict[str, Any]], pipe: PipelineSettings,
               conn: Connection | None, key_of: Callable[[dict[str, Any]], tuple[Any, ...]],
               first_record_no: int, *, state: dict[str, Any] | None = None,
               requested: tuple[datetime, datetime] | None = None, now: datetime | None = None) -> QualityResult:
    """Findings for ``records``; records with an ``error`` finding move to ``rejected`` with the reason."""
    from stockpulse.datatypes.base import Rejected

    findings: list[Finding] = []
    cache: dict[str, Any] = {}
    state = {} if state is None else state
    now = now or utcnow()
    for check, severity, params in configured(checks, pipe):
        context = CheckContext(pipe, params, conn, cache, state, now, requested)
        for index, details in check.run(records, context):
            record = records[index]
            symbol = record.get("symbol")
            key = "|".join(part.isoformat() if hasattr(part, "isoformat") else str(part)
                           for part in key_of(record))[:200]
            findings.append(Finding(check.name, severity, index, symbol, key, details))
    errors: dict[int, list[Finding]] = {}
    for finding in findings:
        if finding.severity == "error":
            errors.setdefault(finding.index, []).append(finding)
    rejected = [Rejected(first_record_no + i, records[i],
                         "; ".join(f"quality check {f.check}: {_describe(f.details)}" for f in errors[i]))
                for i in sorted(errors)]
    valid = [r for i, r in enumerate(records) if i not in errors]
    return QualityResult(valid, rejected, findings)


def check_batch(data_type: Any, records: list[dict[str, Any]], pipe: PipelineSettings, *, first_record_no: int,
                state: dict[str, Any] | None = None,
                requested: tuple[datetime, datetime] | None = None) -> QualityResult:
    """``data_type``'s checks on a batch's valid records, reading history on a connection of their own: the
    caller's write transaction (on SQLite, the database's write lock) does not span the checks."""
    from operator import itemgetter

    from stockpulse.db.engine import get_engine

    if not data_type.quality_checks or not records:
        return QualityResult(records, [], [])
    with get_engine().connect() as read_conn:
        return run_checks(data_type.quality_checks, records, pipe, read_conn,
                          data_type.key_of or itemgetter(*data_type.key), first_record_no, state=state,
                          requested=requested)


def _describe(details: dict[str, Any]) -> str:
    return details.get("reason") or ", ".join(f"{k}={v}" for k, v in details.items())


def store_findings(conn: Connection, findings: list[Finding], *, pipeline: str, data_type: str, provider: str,
                   run_id: str, batch_no: int) -> int:
    """Insert the findings once (a transform that runs twice records each finding once)."""
    if not findings:
        return 0
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from stockpulse.db.models import data_quality_findings as findings_t

    now = utcnow()
    rows = [{"found_at": now, "pipeline": pipeline, "data_type": data_type, "provider": provider, "run_id": run_id,
             "batch_no": batch_no, "check": f.check, "severity": f.severity, "symbol": f.symbol,
             "record_key": f.record_key, "details": f.details} for f in findings]
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(insert(findings_t).on_conflict_do_nothing(
        index_elements=["run_id", "batch_no", "check", "record_key"]), rows)
    counts: dict[tuple[str, str], int] = {}
    for f in findings:
        counts[(f.check, f.severity)] = counts.get((f.check, f.severity), 0) + 1
    log.warning("data quality: %s", ", ".join(f"{n} {check} ({severity})" for (check, severity), n in
                                              sorted(counts.items())),
                extra={"run_id": run_id, "batch_no": batch_no, "pipeline": pipeline, "findings": len(findings)})
    return len(rows)


def list_findings(*, pipeline: str | None = None, since: Any = None, severity: str | None = None,
                  check: str | None = None, limit: int = 100) -> list[Any]:
    from sqlalchemy import select

    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import data_quality_findings as findings_t

    query = select(findings_t).order_by(findings_t.c.id.desc()).limit(limit)
    if pipeline:
        query = query.where(findings_t.c.pipeline == pipeline)
    if since is not None:
        query = query.where(findings_t.c.found_at >= since)
    if severity:
        query = query.where(findings_t.c.severity == severity)
    if check:
        query = query.where(findings_t.c.check == check)
    with get_engine().connect() as conn:
        return conn.execute(query).all()


# ------------------------------------------------------------------------------------------ robust stats


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def robust_scale(sample: list[float]) -> tuple[float, float]:
    """(median, median absolute deviation) of ``sample``: computed once per series, not per point."""
    centre = median(sample)
    return centre, median([abs(v - centre) for v in sample])


def robust_z(value: float, scale: tuple[float, float]) -> float | None:
    """The modified z-score (Iglewicz-Hoaglin): 0.6745 (x - median) / MAD; None when the MAD is 0."""
    centre, mad = scale
    return None if mad == 0 else 0.6745 * (value - centre) / mad
