"""Sentry: errors from workers, beat and the CLI, and beat schedules as Sentry cron monitors.

On only when ``sentry.dsn`` is set. The SDK's Celery integration reports a task's final failure and never a
retry (``Retry`` is control flow); with ``monitor_beat_tasks`` it turns every RedBeat entry into a cron
monitor (check-ins from beat when it sends, from the worker when the task ends). Every event carries the
environment and release, and, inside a stage or a stream consumer, the pipeline/provider/data type/run id
tags (:func:`tag_scope`). Secrets never leave: the SDK's EventScrubber with our key names added, and a
``before_send`` that replaces every configured secret value and key-looking URL parameter anywhere in the
event, task arguments included.
"""

from __future__ import annotations

import logging
from typing import Any

from stockpulse.config import SECRET_KEYS, SECRET_PARAMS, Settings, get_settings, known_secrets

log = logging.getLogger("stockpulse.sentry")
# Set on a log record whose error Sentry already gets as an exception event (the task's final failure).
ALREADY_REPORTED = "sentry_reported_as_exception"
_initialised_for: str | None = None


def init_sentry(settings: Settings | None = None, *, component: str) -> bool:
    """Initialise the SDK once per process when a DSN is configured; returns whether it is on."""
    global _initialised_for
    settings = settings or get_settings()
    conf = settings.sentry
    dsn = conf.get("dsn")
    if not dsn:
        return False
    if _initialised_for == dsn:
        return True
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    from stockpulse import __version__

    exclude = list(conf.get("exclude_beat_tasks", [])) + _sub_minute_schedules(settings)
    denylist = sorted({*DEFAULT_DENYLIST, *SECRET_KEYS, "apikey", "apiKey", "api_secret", "key_id",
                       "apca-api-key-id", "apca-api-secret-key", "x-finnhub-token", "authorization"})
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.environment,
        release=conf.get("release") or f"stockpulse@{__version__}",
        server_name=conf.get("server_name") or None,
        send_default_pii=False,
        event_scrubber=EventScrubber(denylist=denylist, recursive=True),
        before_send=_before_send,
        traces_sample_rate=float(conf.get("traces_sample_rate", 0.0)),
        integrations=[
            CeleryIntegration(monitor_beat_tasks=bool(conf.get("monitor_beat_tasks", True)),
                              exclude_beat_tasks=exclude),
            # Errors logged without an exception event elsewhere become events; warnings (retries) stay
            # breadcrumbs.
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
    )
    sentry_sdk.set_tag("component", component)
    _initialised_for = dsn
    log.info("sentry on (%s, environment %s)", component, settings.environment)
    return True


def _sub_minute_schedules(settings: Settings) -> list[str]:
    """Sentry cron monitors take whole minutes: schedules firing more often (the stream supervisor, every
    30 s) are left out rather than warned about at every fire."""
    import re

    from celery.schedules import schedule

    from stockpulse.schedule import load_beat_schedule

    try:
        entries = load_beat_schedule(settings=settings)
    except Exception:  # beat reports a broken file itself
        return []
    return [f"^{re.escape(name)}$" for name, entry in entries.items()
            if isinstance(entry["schedule"], schedule) and entry["schedule"].seconds % 60]


def tag_scope(**tags: Any) -> None:
    """Tags on every event of the current task or consumer (its isolation scope)."""
    if _initialised_for is None:
        return
    import sentry_sdk

    for key, value in tags.items():
        if value is not None:
            sentry_sdk.set_tag(key, str(value))


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    record = (hint or {}).get("log_record")
    if record is not None and getattr(record, ALREADY_REPORTED, False):
        return None  # the same failure arrives as the task's exception event, with its traceback
    try:
        secrets = known_secrets()
    except Exception:
        secrets = []
    return _scrub(event, secrets)


def _scrub(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, str):
        for value in secrets:
            node = node.replace(value, "[Filtered]")
        return SECRET_PARAMS.sub(r"\1=[Filtered]", node) if "=" in node else node
    if isinstance(node, dict):
        return {k: _scrub(v, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_scrub(v, secrets) for v in node]
    if isinstance(node, tuple):
        return tuple(_scrub(v, secrets) for v in node)
    return node
