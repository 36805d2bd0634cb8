"""``stockpulse`` command line (click)."""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from typing import Any

import click

from stockpulse.errors import ConfigError, StockPulseError


class _Group(click.Group):
    """Turns our own errors into a clear message and exit code instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(ConfigError.exit_code)
        except StockPulseError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            message = _service_error(exc)
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            sys.exit(1)


def _service_error(exc: BaseException) -> str | None:
    """A clear line for Redis or the database being unreachable or unmigrated, instead of a traceback."""
    import redis
    import sqlalchemy.exc as sa_exc

    from stockpulse.config import get_settings, redact_url

    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach Redis at {redact_url(get_settings().redis_url)}: {exc}"
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.ProgrammingError)):
        hint = " (run `stockpulse db upgrade`?)" if "no such table" in str(exc) or "does not exist" in str(exc) else ""
        return f"database at {redact_url(get_settings().database_url)}: {str(exc.orig).strip()}{hint}"
    return None


def _trace_runs() -> None:
    """Commands that start runs open their traces here (``tracing.enabled``): service ``<name>-cli``."""
    from stockpulse.observability.tracing import init_tracing

    init_tracing("cli")


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _symbols(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if not value:
        return None
    from stockpulse.config import TICKER_PATTERN

    symbols = [s.strip().upper() for s in value.split(",") if s.strip()]
    bad = [s for s in symbols if not TICKER_PATTERN.match(s)]
    if bad:
        raise click.BadParameter(f"invalid symbol {bad[0]!r}")
    return symbols


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stockpulse")
def main() -> None:
    """StockPulse market-data ingestion."""


# ---------------------------------------------------------------------------------------------- config


@main.group()
def config() -> None:
    """Check or show the merged configuration."""


@config.command("check")
def config_check() -> None:
    """Validate every configuration layer and beat_schedule.yaml; exit 2 on any error."""
    from stockpulse.config import load_settings
    from stockpulse.schedule import load_beat_schedule

    settings = load_settings(check_secrets=True)
    schedules = load_beat_schedule(settings=settings, include_disabled=False)
    for universe in settings.symbols.values():
        if universe.table:  # files are read while loading; a table needs the database
            universe.resolve()
    click.echo(f"configuration OK: {len(settings.pipelines)} pipelines, {len(settings.providers)} providers, "
               f"{len(schedules)} enabled schedules")


@config.command("show")
def config_show() -> None:
    """Print the merged configuration with every secret as ***."""
    import yaml

    from stockpulse.config import load_settings, redacted

    click.echo(yaml.safe_dump(redacted(load_settings()), sort_keys=False))


@config.command("docs")
@click.option("--check", is_flag=True, help="Exit 1 if the file is not current instead of rewriting it.")
@click.option("--path", "path", type=click.Path(dir_okay=False), default=None,
              help="The Markdown file holding the generated block (default: docs/configuration.md).")
def config_docs(check: bool, path: str | None) -> None:
    """Regenerate the key reference in docs/configuration.md from the configuration schemas."""
    from pathlib import Path

    from stockpulse.config import project_root
    from stockpulse.config_docs import keys, update

    target = Path(path) if path else project_root() / "docs" / "configuration.md"
    if check:
        if not update(target, check=True):
            click.echo(f"{target} is stale: run `stockpulse config docs`", err=True)
            sys.exit(1)
        click.echo(f"{target} is current ({len(keys())} keys)")
        return
    update(target)
    click.echo(f"wrote {len(keys())} keys to {target}")


# ---------------------------------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations to the configured database."""
    from stockpulse.config import get_settings, redact_url
    from stockpulse.db.migrate import upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    click.echo(f"database at {redact_url(url)} is at {revision}")


# ---------------------------------------------------------------------------------------------- pipelines


@main.command()
def pipelines() -> None:
    """List configured pipelines with their queue, provider and schedule."""
    from rich.console import Console
    from rich.table import Table

    from stockpulse.config import get_settings
    from stockpulse.schedule import load_beat_schedule

    settings = get_settings()
    schedules: dict[str, list[str]] = {}
    for name, entry in load_beat_schedule(settings=settings).items():
        if "pipeline" in entry["kwargs"]:
            paused = "" if entry.get("enabled", True) else ", disabled in the file"
            schedules.setdefault(entry["kwargs"]["pipeline"], []).append(f"{name} ({entry['schedule']}{paused})")
    table = Table("pipeline", "data type", "provider", "queue", "symbols", "enabled", "schedule")
    for name, pipe in sorted(settings.pipelines.items()):
        table.add_row(name, pipe.data_type, pipe.provider, pipe.queue, str(len(pipe.symbols)),
                      "yes" if pipe.enabled else "no", ", ".join(schedules.get(name, [])) or "-")
    Console(width=200).print(table)


# -------------------------------------------------------------------------------------------- schedule


@main.group()
def schedule() -> None:
    """RedBeat schedules, edited live: beat picks a change up within one tick, no restart.

    Runtime edits win over beat_schedule.yaml until the file's entry changes; `schedule reset` re-applies
    the file (docs/operations.md)."""


def _schedule_table(infos: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from stockpulse.schedules import age

    last_runs = _last_runs({i.target for i in infos})
    table = Table("name", "runs", "schedule", "state", "origin", "last run", "next run", "last run status")
    for i in infos:
        run = last_runs.get(i.target)
        status = f"{run.status} ({run.trigger}, {age(run.created_at)})" if run else "-"
        table.add_row(i.name, i.target, i.schedule, "active" if i.enabled else "paused", i.origin,
                      age(i.last_run_at), age(i.next_run_at) if i.enabled else "-", status)
    Console(width=200).print(table)


def _last_runs(pipelines: set[str]) -> dict[str, Any]:
    """The newest run of each pipeline, when the database is reachable (the table is useful without it)."""
    from sqlalchemy import select

    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import pipeline_runs as runs_t

    try:
        with get_engine().connect() as conn:
            rows = conn.execute(select(runs_t.c.pipeline, runs_t.c.status, runs_t.c.trigger, runs_t.c.created_at)
                                .where(runs_t.c.pipeline.in_(sorted(pipelines)))
                                .order_by(runs_t.c.created_at)).all()
    except Exception:
        return {}
    return {r.pipeline: r for r in rows}


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True)
def schedule_list(as_json: bool) -> None:
    """Every schedule in RedBeat: what it runs, when, last and next run, and the last run's status."""
    from stockpulse.schedules import Schedules

    store = Schedules()
    infos = store.list()
    if as_json:
        for info in infos:
            click.echo(json.dumps(info.as_dict()))
        return
    _schedule_table(infos)
    if store.deleted():
        click.echo(f"deleted at runtime (back on `schedule reset` or when the file's entry changes): "
                   f"{', '.join(store.deleted())}")


@schedule.command("show")
@click.argument("name")
def schedule_show(name: str) -> None:
    from stockpulse.schedules import Schedules

    click.echo(json.dumps(Schedules().show(name).as_dict(), indent=2))


@schedule.command("set")
@click.argument("name")
@click.option("--cron", help='Five fields: minute hour day month weekday, e.g. "30 18 * * 1-5".')
@click.option("--every", help="An interval: 30s, 5m, 1h, 1d.")
@click.option("--timezone", help="Must be the configured timezone (per-schedule zones are not supported).")
@click.option("--pipeline", help="Creates the schedule when NAME does not exist yet.")
def schedule_set(name: str, cron: str | None, every: str | None, timezone: str | None, pipeline: str | None) -> None:
    """Change when NAME runs (or create it with --pipeline)."""
    from stockpulse.schedules import Schedules

    _schedule_table([Schedules().set(name, cron=cron, every=every, timezone=timezone, pipeline=pipeline)])


@schedule.command("pause")
@click.argument("name")
def schedule_pause(name: str) -> None:
    from stockpulse.schedules import Schedules

    _schedule_table([Schedules().pause(name)])


@schedule.command("resume")
@click.argument("name")
def schedule_resume(name: str) -> None:
    """Active again from now on (slots missed while paused are not run; `run-now` runs one)."""
    from stockpulse.schedules import Schedules

    _schedule_table([Schedules().resume(name)])


@schedule.command("delete")
@click.argument("name")
def schedule_delete(name: str) -> None:
    from stockpulse.schedules import Schedules

    Schedules().delete(name)
    click.echo(f"deleted {name}")


@schedule.command("run-now")
@click.argument("name")
def schedule_run_now(name: str) -> None:
    """Run NAME's pipeline (or task) once now; its schedule is unchanged."""
    from stockpulse.schedules import Schedules

    click.echo(f"sent {name}: task {Schedules().run_now(name)}")


@schedule.command("reset")
@click.argument("names", nargs=-1)
def schedule_reset(names: tuple[str, ...]) -> None:
    """Re-apply beat_schedule.yaml over runtime edits (all entries, or NAMES)."""
    from stockpulse.schedules import Schedules

    for name, what in sorted(Schedules().reset(list(names)).items()):
        click.echo(f"{name}: {what}")


def _wait_for(run_ids: list[str], *, timeout: float, progress: bool = False, label: str = "runs") -> list[Any]:
    """Wait for runs to finish; with ``progress``, a bar of runs done, rows loaded so far and the ETA."""
    from stockpulse.pipeline.runs import FINAL, get_run

    deadline = time.monotonic() + timeout
    pending, rows = set(run_ids), dict.fromkeys(run_ids, 0)
    bar_context = click.progressbar(length=len(run_ids), label=label, show_pos=True, show_eta=True,
                                    item_show_func=lambda loaded: f"{loaded:,} rows loaded"
                                    if loaded is not None else None) if progress else _Null()
    with bar_context as bar:
        while pending and time.monotonic() < deadline:
            finished = 0
            for run_id in list(pending):
                run = get_run(run_id)
                if run is None:
                    continue
                rows[run_id] = run.records_loaded or 0
                if run.status in FINAL:
                    pending.discard(run_id)
                    finished += 1
            bar.update(finished, sum(rows.values()))
            if pending:
                time.sleep(0.25)
    return [get_run(r) for r in run_ids]


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int, current_item: Any = None) -> None:
        return None


def _row_data(row: Any) -> dict[str, Any]:
    """A database row as JSON-ready data (timestamps as ISO 8601)."""
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row._mapping.items()}


def _summary(run: Any) -> str:
    text = (f"run {run.id} {run.pipeline} [{run.trigger}] {run.status}: fetched {run.records_fetched}, "
            f"loaded {run.records_loaded}, rejected {run.records_rejected}")
    if run.trace_id:
        text += f"\n  trace: {run.trace_id}"
    if run.error_message:
        text += f"\n  error: {run.error_type}: {run.error_message}"
    return text


@main.command()
@click.argument("pipeline")
@click.option("--symbols", callback=_symbols, help="Comma-separated subset, e.g. AAPL,MSFT.")
@click.option("--start", callback=_date, help="First session (YYYY-MM-DD); default: from the watermark.")
@click.option("--end", callback=_date, help="Last session (YYYY-MM-DD); default: today.")
@click.option("--full-refresh", is_flag=True,
              help="Ignore the watermarks: everything the provider has (e.g. every SEC filing) is upserted again.")
@click.option("--wait", is_flag=True, help="Wait for the run; exit 1 unless it succeeded.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait with --wait.")
def run(pipeline: str, symbols: list[str] | None, start: date | None, end: date | None, full_refresh: bool,
        wait: bool, timeout: float) -> None:
    """Enqueue a fetch -> transform -> load chain for PIPELINE now."""
    from stockpulse.config import get_settings
    from stockpulse.pipeline.runs import FULL_REFRESH_START, start_run

    if full_refresh:
        if start is not None:
            raise click.UsageError("--full-refresh and --start exclude each other")
        start = FULL_REFRESH_START
    _trace_runs()
    run_id = start_run(pipeline, symbols=symbols, trigger="manual", start=start, end=end)
    click.echo(f"queued run {run_id}")
    if not wait:
        return
    (result,) = _wait_for([run_id], timeout=timeout)
    click.echo(_summary(result))
    if result.status not in ("succeeded", "partial", "failed"):
        click.echo(f"still {result.status} after {timeout:.0f}s: is a worker consuming queue "
                   f"{get_settings().pipeline(pipeline).queue!r}?", err=True)
    if result.status not in ("succeeded", "partial"):
        sys.exit(1)


@main.command()
@click.argument("pipeline")
@click.option("--start", callback=_date, required=True, help="First session (YYYY-MM-DD).")
@click.option("--end", callback=_date, required=True, help="Last session (YYYY-MM-DD).")
@click.option("--symbols", callback=_symbols, help="Comma-separated subset.")
@click.option("--chunk-days", type=click.IntRange(1, 3650), default=None,
              help="Days per chunk (default: the pipeline's backfill_chunk_days option, else 365).")
@click.option("--reprocess", type=click.Choice(["none", "failed", "all"]), default="failed", show_default=True,
              help="Chunks an earlier backfill already ran: none = only new chunks; failed = also the failed "
                   "ones; all = every chunk again. Succeeded chunks are skipped unless all; queued or running "
                   "ones always.")
@click.option("--dry-run", is_flag=True, help="Print the chunks and what would happen to each; enqueue nothing.")
@click.option("--no-wait", is_flag=True, help="Enqueue and return without a progress bar.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the chunks.")
def backfill(pipeline: str, start: date, end: date, symbols: list[str] | None, chunk_days: int | None,
             reprocess: str, dry_run: bool, no_wait: bool, timeout: float) -> None:
    """Load PIPELINE's history from START to END, one run per chunk of days.

    Resumable: the same command again enqueues only chunks that have not succeeded (see --reprocess)."""
    from stockpulse.pipeline.backfill import enqueue, plan_backfill

    if start > end:
        raise click.BadParameter("--start is after --end")
    _trace_runs()
    plan = plan_backfill(pipeline, start, end, symbols=symbols, chunk_days=chunk_days, reprocess=reprocess)
    if dry_run:
        for chunk in plan.chunks:
            click.echo(f"{chunk.days}  {'enqueue' if chunk.enqueue else 'skip':7}  ~{chunk.requests} requests  "
                       f"{chunk.reason}")
        click.echo(f"dry run: {plan.summary()}")
        return
    started = enqueue(plan)
    click.echo(f"queued {len(started)} backfill runs ({plan.summary()})")
    if no_wait or not started:
        return
    results = _wait_for([run_id for _, run_id in started], timeout=timeout, progress=True, label="chunks")
    for result in results:
        click.echo(_summary(result))
    if any(r.status not in ("succeeded", "partial") for r in results):
        sys.exit(1)


@main.command()
@click.argument("pipeline")
@click.option("--symbols", callback=_symbols, help="Comma-separated subset.")
@click.option("--start", callback=_date, help="First session (default: lookback_days back).")
@click.option("--end", callback=_date, help="Last session (default: the last settled session).")
@click.option("--fill", is_flag=True, help="Enqueue backfills for exactly the missing sessions.")
@click.option("--json", "as_json", is_flag=True)
def gaps(pipeline: str, symbols: list[str] | None, start: date | None, end: date | None, fill: bool,
         as_json: bool) -> None:
    """Sessions the exchange calendar expects that PIPELINE's daily bars lack, per symbol."""
    from stockpulse.pipeline.gaps import fill_gaps, find_gaps, summary

    found = find_gaps(pipeline, symbols=symbols, start=start, end=end)
    report = summary(found)
    if as_json:
        click.echo(json.dumps(report))
    else:
        for g in found:
            ranges = report["symbols"].get(g.symbol)
            click.echo(f"{g.symbol}: {len(g.missing)} of {g.expected} sessions missing"
                       + (f": {', '.join(ranges)}" if ranges else ""))
    if fill and report["missing"]:
        _trace_runs()
        run_ids = fill_gaps(pipeline, found)
        click.echo(f"queued {len(run_ids)} backfill runs: {', '.join(run_ids)}", err=as_json)


@main.command()
@click.option("--pipeline")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "partial", "failed", "skipped"]))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--trace", "trace_id", help="The run of this trace id (from a trace viewer or a log line).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def runs(pipeline: str | None, status: str | None, limit: int, trace_id: str | None, as_json: bool) -> None:
    """Recent pipeline runs, newest first, with their trace ids when tracing is on."""
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from stockpulse.db.engine import get_engine
    from stockpulse.db.models import pipeline_runs as t

    query = select(t).order_by(t.c.created_at.desc()).limit(limit)
    if pipeline:
        query = query.where(t.c.pipeline == pipeline)
    if status:
        query = query.where(t.c.status == status)
    if trace_id:
        query = query.where(t.c.trace_id == trace_id.strip().lower())
    with get_engine().connect() as conn:
        rows = conn.execute(query).all()
    if as_json:
        for row in rows:
            click.echo(json.dumps(_row_data(row)))
        return
    table = Table("run id", "pipeline", "trigger", "status", "created", "fetched", "loaded", "rejected", "trace",
                  "error")
    for row in rows:
        table.add_row(row.id, row.pipeline, row.trigger, row.status, row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      str(row.records_fetched), str(row.records_loaded), str(row.records_rejected),
                      row.trace_id or "-", (row.error_message or "")[:80])
    Console(width=240).print(table)


# ---------------------------------------------------------------------------------------------- providers


@main.command()
def providers() -> None:
    """Each provider's circuit-breaker state and remaining request quota (shared by all workers)."""
    from rich.console import Console
    from rich.table import Table

    from stockpulse.providers import PROVIDERS
    from stockpulse.reliability import breaker, quotas

    table = Table("provider", "quota", "remaining", "window resets in", "breaker", "consecutive failures")
    for name in sorted(PROVIDERS):
        quota = quotas.status(name)
        state, failures = breaker.state(name)
        table.add_row(name, quota.limit or "-", "-" if quota.remaining is None else str(quota.remaining),
                      "-" if quota.resets_in_s is None else f"{quota.resets_in_s:.0f}s", state, str(failures))
    Console(width=200).print(table)


# ---------------------------------------------------------------------------------------------- monitoring


def _ago(moment: Any, now: Any) -> str:
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The snapshot as one JSON object.")
def status(as_json: bool) -> None:
    """The quick look: each pipeline's last run and freshness, queue and DLQ depth, breakers."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from stockpulse.observability.status import take_snapshot

    snap = take_snapshot()
    if as_json:
        click.echo(json.dumps(asdict(snap), default=str, indent=2))
        sys.exit(1 if snap.problems else 0)
    now = snap.taken_at
    colours = {"succeeded": "green", "partial": "yellow", "failed": "red", "running": "cyan", "queued": "cyan",
               "skipped": "white"}
    table = Table("pipeline", "data type", "provider", "queue", "last run", "status", "loaded", "last success",
                  "newest record", "due", "quarantined", "missing sessions", title="Pipelines")
    for p in snap.pipelines:
        state = p.last_status or "never run"
        state = f"[{colours.get(state, 'white')}]{state}[/]" if p.enabled else f"[dim]{state} (disabled)[/]"
        table.add_row(p.name, p.data_type, p.provider, p.queue, _ago(p.last_finished_at, now), state,
                      "-" if p.last_records_loaded is None else f"{p.last_records_loaded:,}",
                      _ago(p.last_success_at, now), _ago(p.newest_record_at, now), _due(p.freshness),
                      str(p.quarantined),
                      "-" if p.missing_sessions is None else str(p.missing_sessions))
    console = Console(width=250)
    console.print(table)
    queues = "  ".join(f"{q} {n}" for q, n in snap.queues.items()) or "-"
    console.print(f"queues waiting: {queues}")
    console.print(f"dead letters: {'[red]' if snap.dlq_depth else ''}{snap.dlq_depth}{'[/]' if snap.dlq_depth else ''}")
    for prov in snap.providers:
        colour = {"closed": "green", "half-open": "yellow"}.get(prov.breaker_state, "red")
        quota = f", quota {prov.quota}: {prov.quota_remaining} left" if prov.quota else ""
        console.print(f"provider {prov.name}: breaker [{colour}]{prov.breaker_state}[/] "
                      f"({prov.breaker_failures} failures){quota}")
    for problem in snap.problems:
        console.print(f"[red]cannot read {problem}[/]")
    sys.exit(1 if snap.problems else 0)


def _due(freshness: Any) -> str:
    """The calendar's verdict on a pipeline's data, for ``status``."""
    if freshness is None:
        return "-"
    if not freshness.expected:
        return "[dim]nothing due[/]"
    if not freshness.late:
        return "[green]on time[/]"
    if freshness.overdue_s == float("inf"):
        return "[red]none loaded[/]"
    minutes = int(freshness.overdue_s // 60)
    late = f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
    symbols = f", {freshness.stale_symbols} symbols" if freshness.stale_symbols else ""
    return f"[red]late {late}{symbols}[/]"


@main.command()
@click.argument("group")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def worker(group: str, loglevel: str) -> None:
    """Start the worker GROUP defined in workers/workers.yaml (its queues, pool and concurrency)."""
    import os

    from stockpulse.workers import load_worker_groups

    groups = load_worker_groups()
    if group not in groups:
        raise ConfigError(f"unknown worker group {group!r} (workers/workers.yaml defines: {', '.join(groups)})")
    argv = [sys.executable, "-m", *groups[group].command(), "-l", loglevel]
    os.execv(argv[0], argv)


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Default: exporter.port (9808).")
@click.option("--address", help="Default: exporter.address.")
def exporter(port: int | None, address: str | None) -> None:
    """Export Celery events (celery-exporter's metric names) and system health gauges for Prometheus."""
    from stockpulse.observability.exporter import serve

    serve(port, address)


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Default: flower.port (5555).")
@click.option("--address", help="Default: flower.address; anything but loopback needs flower.basic_auth.")
def flower(port: int | None, address: str | None) -> None:
    """Start Flower with the configured authentication."""
    import os

    from stockpulse.observability.flower import flower_command

    argv, env = flower_command(address=address, port=port)
    os.execve(argv[0], argv, env)


# ---------------------------------------------------------------------------------------------- dlq


def _age(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from stockpulse.schedule import parse_duration

    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A duration back from now (1h, 2d) or an ISO date/time."""
    if value is None:
        return None
    from datetime import UTC, datetime

    from stockpulse.schedule import parse_duration

    try:
        return time.time() - parse_duration(value).total_seconds()
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (1h, 2d) nor a date/time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@main.group()
def dlq() -> None:
    """The dead-letter queue: stages that failed for good."""


@dlq.command("list")
@click.option("--pipeline")
@click.option("--since", callback=_since, help="Only entries that failed since (1h, 2d or an ISO time).")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(pipeline: str | None, since: float | None, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from stockpulse.reliability import dlq as dead

    found = dead.entries(pipeline=pipeline, since=since)
    if as_json:
        for entry in found:
            click.echo(json.dumps(entry.summary()))
        return
    table = Table("id", "pipeline", "stage", "error", "attempts", "last failure", "message")
    for e in found:
        table.add_row(e.id, e.pipeline, e.stage, e.error_type, str(e.attempts), e.summary()["last_failure"],
                      e.message[:90])
    Console(width=220).print(table)


@dlq.command("show")
@click.argument("entry_id")
def dlq_show(entry_id: str) -> None:
    from stockpulse.reliability import dlq as dead

    entry = dead.get(entry_id)
    data = entry.summary()
    data["traceback"] = entry.traceback
    data["stage_input"] = entry.stage_input if not isinstance(entry.stage_input, dict) or "inline" not in \
        entry.stage_input else {"inline": f"<{entry.stage_input.get('bytes', '?')} bytes>"}
    click.echo(json.dumps(data, indent=2, default=str))


@dlq.command("replay")
@click.argument("entry_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Every entry (of --pipeline, if given).")
@click.option("--pipeline")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
def dlq_replay(entry_id: str | None, replay_all: bool, pipeline: str | None, dry_run: bool) -> None:
    """Re-run failed batches with a fresh retry budget (a new run, trigger replay)."""
    from stockpulse.reliability import dlq as dead

    if bool(entry_id) == replay_all:
        raise click.UsageError("give one entry id, or --all")
    ids = [entry_id] if entry_id else [e.id for e in dead.entries(pipeline=pipeline)]
    if not dry_run:
        _trace_runs()
    for i in ids:
        result = dead.replay(i, dry_run=dry_run)
        if dry_run:
            click.echo(f"would replay {i}: {result['pipeline']} batch {result['batch_no']} of run "
                       f"{result['original_run']} (failed in {result['failed_stage']})")
        else:
            click.echo(f"replayed {i} as run {result['replay_run']} from {result['from_stage']}")
    if not ids:
        click.echo("nothing to replay")


@dlq.command("purge")
@click.argument("entry_id", required=False)
@click.option("--older-than", callback=_age, help="Entries whose last failure is older than this (7d, 12h).")
def dlq_purge(entry_id: str | None, older_than: float | None) -> None:
    from stockpulse.reliability import dlq as dead

    if (entry_id is None) == (older_than is None):
        raise click.UsageError("give one entry id, or --older-than")
    click.echo(f"purged {dead.purge(entry_id, older_than_s=older_than)} entries")


# ---------------------------------------------------------------------------------------------- quarantine


@main.command()
@click.option("--pipeline")
@click.option("--since", callback=_since, help="Only findings since (1h, 2d or an ISO time).")
@click.option("--severity", type=click.Choice(["error", "warn"]))
@click.option("--check", "check_name", help="Only this check (price_spike, stale_close, ...).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding.")
def quality(pipeline: str | None, since: float | None, severity: str | None, check_name: str | None, limit: int,
            as_json: bool) -> None:
    """Data-quality findings of the transform stage, newest first (error: the record was quarantined)."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from stockpulse.quality import list_findings

    rows = list_findings(pipeline=pipeline, since=datetime.fromtimestamp(since, UTC) if since else None,
                         severity=severity, check=check_name, limit=limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(_row_data(row)))
        return
    table = Table("id", "pipeline", "check", "severity", "symbol", "record", "details", "run", "at")
    for row in rows:
        details = row.details.get("reason") if isinstance(row.details, dict) else str(row.details)
        table.add_row(str(row.id), row.pipeline, row.check, row.severity, row.symbol or "-", row.record_key[-40:],
                      str(details)[:80], row.run_id[:8], row.found_at.strftime("%Y-%m-%d %H:%M:%S"))
    Console(width=240).print(table)
    if not rows:
        click.echo("no findings")


@main.command()
@click.option("--pipeline", help="One reference pipeline (default: every enabled one).")
@click.option("--days", type=click.IntRange(1, 3650), help="Compare this many recent days (default: "
              "options.reconcile.lookback_days).")
@click.option("--json", "as_json", is_flag=True)
def reconcile(pipeline: str | None, days: int | None, as_json: bool) -> None:
    """Compare reference pipelines' bars with the served bars now (the reconcile_bars task does it daily);
    disagreements become findings (`stockpulse quality --check reconcile_close`)."""
    from stockpulse.pipeline.reconcile import as_dicts
    from stockpulse.pipeline.reconcile import reconcile as run_reconcile

    results = run_reconcile(pipeline, days=days)
    if as_json:
        click.echo(json.dumps(as_dicts(results)))
        return
    for r in results:
        click.echo(f"{r.pipeline}: {r.compared} bars compared, {r.disagreements} disagree, {r.new_findings} new "
                   "findings")
    if not results:
        click.echo("no enabled reference pipelines (bars pipelines with options.reference: true)")


@main.group()
def quarantine() -> None:
    """Records rejected by validation, kept with the reason."""


@quarantine.command("list")
@click.option("--pipeline")
@click.option("--reason", help="Only reasons containing this text.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True)
def quarantine_list(pipeline: str | None, reason: str | None, limit: int, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from stockpulse.pipeline.quarantine import list_quarantined

    rows = list_quarantined(pipeline=pipeline, reason=reason, limit=limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(_row_data(row)))
        return
    table = Table("id", "pipeline", "provider", "symbol", "run", "reason", "at")
    for row in rows:
        table.add_row(str(row.id), row.pipeline, row.provider, row.symbol or "-", row.run_id[:8], row.reason[:90],
                      row.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    Console(width=220).print(table)


@quarantine.command("show")
@click.argument("row_id", type=int)
def quarantine_show(row_id: int) -> None:
    from stockpulse.pipeline.quarantine import get_quarantined

    row = get_quarantined(row_id)
    if row is None:
        raise StockPulseError(f"no quarantined record {row_id}")
    data = _row_data(row)
    data["record"] = json.loads(row.record)
    click.echo(json.dumps(data, indent=2))


@quarantine.command("reprocess")
@click.option("--pipeline")
def quarantine_reprocess(pipeline: str | None) -> None:
    """Validate quarantined records again with the current schemas; load those that now pass."""
    from stockpulse.pipeline.quarantine import reprocess

    counts = reprocess(pipeline=pipeline)
    click.echo(f"checked {counts['checked']}: loaded {counts['loaded']}, still invalid {counts['still_invalid']}")


@quarantine.command("purge")
@click.argument("row_id", type=int, required=False)
@click.option("--pipeline")
@click.option("--older-than", callback=_age)
@click.option("--all", "purge_all", is_flag=True, help="Needed to purge without any filter.")
def quarantine_purge(row_id: int | None, pipeline: str | None, older_than: float | None, purge_all: bool) -> None:
    from stockpulse.pipeline.quarantine import purge

    if row_id is None and pipeline is None and older_than is None and not purge_all:
        raise click.UsageError("give a row id, --pipeline, --older-than, or --all")
    click.echo(f"purged {purge(pipeline=pipeline, older_than_s=older_than, row_id=row_id)} records")


# ---------------------------------------------------------------------------------------------- sim


@main.group()
def sim() -> None:
    """The loopback provider simulator."""


@sim.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535))
@click.option("--seed", default=None, type=int, help="Data seed (default: sim.seed from config).")
def sim_serve(host: str, port: int, seed: int | None) -> None:
    """Serve every supported provider's API on HOST:PORT."""
    from stockpulse.sim.server import make_server, state_from_settings

    state = state_from_settings(seed)
    server = make_server(host, port, state)
    click.echo(f"simulator listening on http://{host}:{server.server_address[1]} (seed {state.seed})", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------- standalone


@main.command()
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--sim-port", default=0, help="Simulator port (0: any free port).")
def standalone(flower_port: int, sim_port: int) -> None:
    """Run everything on this machine: Redis, migrations, simulator, worker, beat and Flower."""
    from stockpulse.standalone import run_standalone

    sys.exit(run_standalone(flower_port=flower_port, sim_port=sim_port))


if __name__ == "__main__":
    main()
