"""The built-in notifier, for installs without Prometheus and Alertmanager (the standalone stack).

A beat task on the ``maintenance`` queue (``stockpulse.maintenance.notify``) evaluates the key conditions of
``monitoring/alerts/stockpulse.yml`` from the database and Redis (the same snapshot as ``stockpulse status``):
a pipeline's newest run failed, its data is overdue by its calendar, its schedule is owed a success, the
dead-letter queue grew, a provider's breaker is open. Each alert has a key; a new one is sent at once, a
firing one again every ``repeat_interval_s``, and a resolved message when it clears. The alerts of one
pipeline (or provider, or the system) of one evaluation go out as one message, to every configured sink:
a Slack-compatible webhook, SMTP e-mail, the log. State lives in Redis, so any worker may evaluate.
"""

from __future__ import annotations

import json
import logging
import smtplib
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import requests

from stockpulse.config import Settings, get_settings

log = logging.getLogger("stockpulse.notifier")
STATE_KEY = "stockpulse:notifier:alerts"  # alert key -> JSON {alert, first_seen, last_sent}
DLQ_HISTORY_KEY = "stockpulse:notifier:dlq_depth"  # sorted set of "ts:depth" by time
LOCK_KEY = "stockpulse:notifier:lock"
DLQ_WINDOW_S = 1800.0


@dataclass(frozen=True)
class Alert:
    key: str  # what deduplicates it: one condition of one pipeline or provider
    name: str  # the Prometheus rule of the same condition (docs/runbook.md has its section)
    group: str  # the pipeline, provider or "system" whose alerts travel together
    severity: str
    summary: str
    description: str

    def runbook(self, base: str) -> str:
        return f"{base}docs/runbook.md#{self.name.lower()}"


@dataclass(frozen=True)
class Notice:
    status: str  # firing | resolved
    alert: Alert
    repeat: bool = False


def evaluate(settings: Settings | None = None, now: datetime | None = None) -> list[Alert]:
    """The alerts firing now."""
    from stockpulse.observability.status import take_snapshot
    from stockpulse.redis_conn import redis_client

    settings = settings or get_settings()
    snap = take_snapshot(settings)
    now = now or snap.taken_at
    alerts: list[Alert] = []
    for p in snap.pipelines:
        if not p.enabled:
            continue
        if p.last_status == "failed":
            alerts.append(Alert(f"run_failed:{p.name}", "StockPulseRunFailed", p.name, "warning",
                                f"{p.name} run failed",
                                f"Run {p.last_run_id} of {p.name} ({p.provider} {p.data_type}) failed after its "
                                f"retries: {p.last_error or 'see stockpulse runs'}. Then `stockpulse dlq list`."))
        if p.freshness is not None and p.freshness.late:
            overdue = ("none loaded yet" if p.freshness.overdue_s == float("inf")
                       else f"overdue for {p.freshness.overdue_s / 60:.0f} min")
            stale = f", {p.freshness.stale_symbols} symbols behind" if p.freshness.stale_symbols else ""
            alerts.append(Alert(f"data_overdue:{p.name}", "StockPulseDataOverdue", p.name,
                                "critical" if p.data_type == "trades" else "warning",
                                f"{p.name} data is late by its calendar",
                                f"Expected {p.freshness.rule}: {overdue}{stale}."))
        if p.schedule_due_at and (p.last_success_at is None or p.last_success_at < p.schedule_due_at):
            alerts.append(Alert(f"run_missing:{p.name}", "StockPulseScheduledRunMissing", p.name, "warning",
                                f"{p.name} has no successful run since it was last due",
                                f"{p.name} was due to run at {p.schedule_due_at:%Y-%m-%d %H:%M} UTC and no run "
                                "has succeeded since. Is beat running (`stockpulse schedule list`)?"))
    for prov in snap.providers:
        if prov.breaker_state == "open":
            alerts.append(Alert(f"breaker_open:{prov.name}", "StockPulseCircuitBreakerOpen", prov.name, "warning",
                                f"{prov.name} circuit breaker open",
                                f"Requests to {prov.name} are stopped after {prov.breaker_failures} consecutive "
                                "transient failures; its batches wait and resume when it closes."))
    if not any(problem.startswith("redis") for problem in snap.problems):
        grown = _dlq_grew(redis_client(settings.redis_url), snap.dlq_depth, now.timestamp())
        if grown is not None:
            alerts.append(Alert("dlq_growing", "StockPulseDeadLetterQueueGrowing", "system", "warning",
                                f"Dead-letter queue growing: {snap.dlq_depth} entries",
                                f"The dead-letter queue grew from {grown} to {snap.dlq_depth} entries in "
                                f"{DLQ_WINDOW_S / 60:.0f} minutes. `stockpulse dlq list` groups them by error."))
    for problem in snap.problems:
        source = problem.split(":", 1)[0]
        if source not in ("database", "redis"):
            continue  # e.g. one pipeline's unreadable symbol file: its own run fails and says so
        alerts.append(Alert(f"source_down:{source}", "StockPulseStatusSourceDown", "system", "critical",
                            f"cannot read {source}", problem))
    return alerts


def _dlq_grew(client: Any, depth: int, now: float) -> int | None:
    """The smallest depth of the last half hour when the queue is deeper now, else None."""
    pipe = client.pipeline()
    pipe.zadd(DLQ_HISTORY_KEY, {f"{now}:{depth}": now})
    pipe.zremrangebyscore(DLQ_HISTORY_KEY, "-inf", now - DLQ_WINDOW_S)
    pipe.zrange(DLQ_HISTORY_KEY, 0, -1)
    history = [int(m.decode().rsplit(":", 1)[1]) for m in pipe.execute()[-1]]
    lowest = min(history, default=depth)
    return lowest if depth > 0 and depth > lowest else None


def notify(settings: Settings | None = None, now: float | None = None) -> list[Notice]:
    """Evaluate, deduplicate and deliver; returns what was sent. One evaluation at a time (Redis lock)."""
    from stockpulse.redis_conn import redis_client

    settings = settings or get_settings()
    conf = settings.notifier
    client = redis_client(settings.redis_url)
    if not client.set(LOCK_KEY, 1, nx=True, ex=120):
        log.info("notifier: another evaluation is running")
        return []
    try:
        now = now or time.time()
        firing = {a.key: a for a in evaluate(settings, datetime.fromtimestamp(now, UTC))}
        state = {k.decode(): json.loads(v) for k, v in client.hgetall(STATE_KEY).items()}
        notices: list[Notice] = []
        for key, alert in firing.items():
            previous = state.get(key)
            if previous is None:
                notices.append(Notice("firing", alert))
            elif now - previous["last_sent"] >= float(conf.get("repeat_interval_s", 14400)):
                notices.append(Notice("firing", alert, repeat=True))
        notices += [Notice("resolved", Alert(**state[key]["alert"])) for key in state if key not in firing]
        if notices and not deliver(notices, settings):
            return []  # nothing reached anyone: the same notices go out at the next evaluation
        pipe = client.pipeline()
        for notice in notices:
            key = notice.alert.key
            if notice.status == "resolved":
                pipe.hdel(STATE_KEY, key)
            else:
                first = state.get(key, {}).get("first_seen", now)
                pipe.hset(STATE_KEY, key, json.dumps({"alert": asdict(notice.alert), "first_seen": first,
                                                      "last_sent": now}))
        pipe.execute()
        return notices
    finally:
        client.delete(LOCK_KEY)


def deliver(notices: list[Notice], settings: Settings) -> bool:
    """One message per group to every sink; True when at least one sink took them."""
    conf = settings.notifier
    base = conf.get("runbook_base_url") or ""
    groups: dict[str, list[Notice]] = {}
    for notice in notices:
        groups.setdefault(notice.alert.group, []).append(notice)
    delivered = False
    for group, items in sorted(groups.items()):
        title = _title(group, items)
        if conf.get("log", True):
            for n in items:
                (log.warning if n.status == "firing" else log.info)(
                    "%s %s: %s", n.status.upper(), n.alert.name, n.alert.summary,
                    extra={"alert": n.alert.name, "alert_key": n.alert.key, "alert_status": n.status,
                           "severity": n.alert.severity, "group": group, "repeat": n.repeat})
            delivered = True
        if conf.get("webhook_url"):
            delivered |= _send(_webhook, conf, title, items, base, what="webhook")
        if (conf.get("email") or {}).get("host"):
            delivered |= _send(_email, conf, title, items, base, what="e-mail")
    return delivered


def _send(sender: Any, conf: dict[str, Any], title: str, items: list[Notice], base: str, what: str) -> bool:
    try:
        sender(conf, title, items, base)
        return True
    except Exception as exc:  # one sink down must not keep the others from hearing
        log.error("notifier: %s delivery failed: %s: %s", what, type(exc).__name__, exc)
        return False


def _title(group: str, items: list[Notice]) -> str:
    firing = [n for n in items if n.status == "firing"]
    worst = "critical" if any(n.alert.severity == "critical" for n in firing) else "warning"
    if firing:
        return f"[FIRING:{len(firing)}] {worst}: {group}"
    return f"[RESOLVED] {group}"


def _line(notice: Notice, base: str) -> str:
    again = " (still firing)" if notice.repeat else ""
    return (f"{notice.status.upper()} {notice.alert.name}{again}: {notice.alert.summary}\n"
            f"{notice.alert.description}\nRunbook: {notice.alert.runbook(base)}")


def _webhook(conf: dict[str, Any], title: str, items: list[Notice], base: str) -> None:
    """Slack's incoming-webhook payload (Mattermost and Rocket.Chat accept it too)."""
    payload = {"text": title, "attachments": [
        {"color": "good" if n.status == "resolved" else ("danger" if n.alert.severity == "critical" else "warning"),
         "title": f"{n.status.upper()} {n.alert.name}: {n.alert.summary}",
         "text": f"{n.alert.description}\nRunbook: {n.alert.runbook(base)}",
         "fields": [{"title": "severity", "value": n.alert.severity, "short": True},
                    {"title": "key", "value": n.alert.key, "short": True}]}
        for n in items]}
    reply = requests.post(conf["webhook_url"], json=payload, timeout=float(conf.get("timeout_s", 10)))
    reply.raise_for_status()


def _email(conf: dict[str, Any], title: str, items: list[Notice], base: str) -> None:
    email = conf["email"]
    message = EmailMessage()
    message["Subject"] = title
    message["From"] = email.get("sender") or "stockpulse@localhost"
    message["To"] = ", ".join(email.get("to") or [])
    message.set_content("\n\n".join(_line(n, base) for n in items))
    with smtplib.SMTP(email["host"], int(email.get("port", 587)), timeout=float(conf.get("timeout_s", 10))) as smtp:
        if email.get("starttls", True):
            smtp.starttls()
        if email.get("username"):
            smtp.login(email["username"], email.get("password") or "")
        smtp.send_message(message)
