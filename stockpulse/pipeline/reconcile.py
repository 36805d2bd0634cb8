"""Cross-provider reconciliation: a reference pipeline's bars against the served bars of another provider.

A bars pipeline with ``options.reference: true`` loads its provider's bars into ``reference_bars`` (per
source) instead of ``bars``. ``stockpulse.maintenance.reconcile_bars`` (beat, daily) joins the two on symbol,
interval and session over the last ``reconcile.lookback_days`` and records each close or volume further apart
than ``reconcile.close_pct`` / ``reconcile.volume_pct`` as a data-quality finding (checks
``reconcile_close`` and ``reconcile_volume``, severity ``warn``, under the reference pipeline). A
disagreement is recorded once, however many runs see it; ``stockpulse quality --check reconcile_close``
lists them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from stockpulse.config import PipelineSettings, get_settings
from stockpulse.db.engine import get_engine
from stockpulse.db.models import bars, data_quality_findings, reference_bars
from stockpulse.errors import ConfigError, utcnow
from stockpulse.observability import metrics
from stockpulse.quality import Finding, store_findings

log = logging.getLogger("stockpulse.quality")
DEFAULTS = {"close_pct": 0.5, "volume_pct": 25.0, "lookback_days": 10}
# Findings of one reference pipeline share a run id derived from its name: the unique (run_id, batch_no,
# check, record_key) index then records each disagreement once across runs.
NAMESPACE = uuid.UUID("8a0d5d55-32b5-4b8e-9d0b-6c0a6f2b7e11")


@dataclass(frozen=True)
class Reconciled:
    pipeline: str
    compared: int
    disagreements: int
    new_findings: int


def reference_pipelines() -> list[PipelineSettings]:
    return [p for _, p in sorted(get_settings().pipelines.items())
            if p.enabled and p.data_type == "bars" and p.options.get("reference")]


def run_id_of(pipeline: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"reconcile:{pipeline}"))


def compare(conn: Connection, pipe: PipelineSettings, *, now: datetime | None = None,
            days: int | None = None) -> tuple[int, list[Finding]]:
    """(pairs compared, disagreements) between ``pipe``'s reference bars and the served bars."""
    options = {**DEFAULTS, **(pipe.options.get("reconcile") or {})}
    since = (now or utcnow()) - timedelta(days=days or int(options["lookback_days"]))
    since = datetime.combine(since.date(), datetime.min.time(), UTC)
    close_limit = float(options["close_pct"]) / 100
    volume_pct = options["volume_pct"]
    r, b = reference_bars.c, bars.c
    pairs = conn.execute(
        select(r.symbol, r.ts, r.close, r.volume, b.close, b.volume, b.source)
        .join(bars, (b.symbol == r.symbol) & (b.interval == r.interval) & (b.ts == r.ts))
        .where(r.source == pipe.provider, r.interval == pipe.interval, r.symbol.in_(pipe.symbols), r.ts >= since,
               b.source != pipe.provider)
        .order_by(r.symbol, r.ts)).all()
    found: list[Finding] = []
    for symbol, ts, ref_close, ref_volume, close, volume, served_by in pairs:
        key = f"{symbol}|{pipe.interval}|{ts.isoformat()}|{served_by}"
        where = {"served_by": served_by, "reference": pipe.provider, "ts": ts.isoformat()}
        apart = abs(ref_close - close) / close
        if apart > close_limit:
            found.append(Finding("reconcile_close", "warn", len(found), symbol, key, {
                "reason": f"{pipe.provider} close {ref_close:g} is {ref_close / close - 1:+.2%} from {served_by}'s "
                          f"{close:g} on {ts.date()}", "close": close, "reference_close": ref_close, **where}))
        larger = max(ref_volume, volume)
        if volume_pct is not None and larger > 0 and abs(ref_volume - volume) / larger > float(volume_pct) / 100:
            found.append(Finding("reconcile_volume", "warn", len(found), symbol, key, {
                "reason": f"{pipe.provider} volume {ref_volume:g} is {abs(ref_volume - volume) / larger:.0%} apart "
                          f"from {served_by}'s {volume:g} on {ts.date()}", "volume": volume,
                "reference_volume": ref_volume, **where}))
    return len(pairs), found


def reconcile(pipeline: str | None = None, *, now: datetime | None = None, days: int | None = None) -> list[Reconciled]:
    """Compare every enabled reference pipeline (or one) and store the disagreements not recorded yet."""
    settings = get_settings()
    pipes = reference_pipelines() if pipeline is None else [settings.pipeline(pipeline)]
    for pipe in pipes:
        if pipe.data_type != "bars" or not pipe.options.get("reference"):
            raise ConfigError(f"pipeline {pipe.name!r} is not a reference bars pipeline (options.reference: true)")
    out = []
    for pipe in pipes:
        run_id = run_id_of(pipe.name)
        with get_engine().begin() as conn:
            compared, found = compare(conn, pipe, now=now, days=days)
            known = set(conn.execute(select(data_quality_findings.c.check, data_quality_findings.c.record_key)
                                     .where(data_quality_findings.c.run_id == run_id)).all()) if found else set()
            new = [f for f in found if (f.check, f.record_key) not in known]
            store_findings(conn, new, pipeline=pipe.name, data_type="bars", provider=pipe.provider, run_id=run_id,
                           batch_no=0)
        metrics.quality_findings(pipe.name, [(f.check, f.severity) for f in new])
        log.info("reconciled %s: %d bars compared, %d disagree (%d new)", pipe.name, compared, len(found), len(new),
                 extra={"pipeline": pipe.name, "compared": compared, "disagreements": len(found),
                        "new_findings": len(new)})
        out.append(Reconciled(pipe.name, compared, len(found), len(new)))
    return out


def as_dicts(results: list[Reconciled]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
