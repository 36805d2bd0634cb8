"""The built-in notifier end to end: a real worker evaluates from the database and Redis and delivers to a
loopback Slack-compatible webhook and a local SMTP sink; deduplicated, repeated, resolved, grouped."""

from __future__ import annotations

import json
import time
from datetime import date
from typing import Any

import pytest

from tests.conftest import SimControl, Stack
from tests.observability.recorder import RecordingServer

pytestmark = pytest.mark.integration
REPEAT_S = 8


def notify() -> list[dict[str, Any]]:
    from stockpulse.celery_app import app

    return app.send_task("stockpulse.maintenance.notify").get(timeout=60)


def test_alerts_are_sent_once_grouped_repeated_and_resolved(clean_stack: Stack, sim: SimControl, redis_client: Any,
                                                            webhook: RecordingServer,
                                                            smtp_sink: tuple[int, list[Any]]) -> None:
    from stockpulse.observability.notifier import DLQ_HISTORY_KEY, LOCK_KEY, STATE_KEY

    redis_client.delete(STATE_KEY, DLQ_HISTORY_KEY, LOCK_KEY)
    smtp_port, emails = smtp_sink
    clean_stack.restart_worker(
        STOCKPULSE_NOTIFIER__ENABLED="true", STOCKPULSE_NOTIFIER__WEBHOOK_URL=f"{webhook.base_url}/hooks/ops",
        STOCKPULSE_NOTIFIER__REPEAT_INTERVAL_S=str(REPEAT_S), STOCKPULSE_NOTIFIER__EMAIL__HOST="127.0.0.1",
        STOCKPULSE_NOTIFIER__EMAIL__PORT=str(smtp_port), STOCKPULSE_NOTIFIER__EMAIL__STARTTLS="false",
        STOCKPULSE_NOTIFIER__EMAIL__TO="[ops@localhost]", STOCKPULSE_STAGES__FETCH__MAX_RETRIES="0")
    sim.fault("alpaca", "malformed", times=2)
    failed = clean_stack.run("daily_bars", symbols=["AAPL"], start=date(2024, 1, 2), end=date(2024, 1, 31))
    assert failed.status == "failed"

    first = notify()
    started = time.monotonic()
    keys = {n["key"] for n in first}
    assert "run_failed:daily_bars" in keys and "data_overdue:daily_bars" in keys  # nothing loaded by its calendar
    assert all(n["status"] == "firing" and not n["repeat"] for n in first)
    groups = {n["group"] for n in first}
    messages = [json.loads(body) for body in webhook.bodies]
    assert len(messages) == len(groups)  # one message per pipeline (or provider, or system)
    daily = next(m for m in messages if m["text"].endswith(": daily_bars"))
    assert daily["text"] == "[FIRING:2] warning: daily_bars"
    titles = sorted(a["title"] for a in daily["attachments"])
    assert titles[0] == "FIRING StockPulseDataOverdue: daily_bars data is late by its calendar"
    assert titles[1] == "FIRING StockPulseRunFailed: daily_bars run failed"
    assert failed.id in json.dumps(daily) and "docs/runbook.md#stockpulserunfailed" in json.dumps(daily)
    deadline = time.monotonic() + 10
    while len(emails) < len(groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(emails) == len(groups) and all(e.rcpt_tos == ["ops@localhost"] for e in emails)
    assert any(b"Subject: [FIRING:2] warning: daily_bars" in e.content for e in emails)

    assert notify() == []  # still firing, already told: nothing new
    assert len(webhook.bodies) == len(groups)

    # The next run succeeds: its failure resolves (its data is still late for the other symbols).
    sim.clear()
    assert clean_stack.run("daily_bars", symbols=["AAPL"], start=date(2024, 1, 2), end=date(2024, 1, 31)).status \
        == "succeeded"
    resolved = notify()
    assert time.monotonic() - started < REPEAT_S, "too slow to tell a resolution from a repeat"
    assert [(n["key"], n["status"]) for n in resolved] == [("run_failed:daily_bars", "resolved")]
    message = json.loads(webhook.bodies[-1])
    assert message["text"] == "[RESOLVED] daily_bars"
    assert message["attachments"][0]["color"] == "good"

    time.sleep(max(0.0, REPEAT_S - (time.monotonic() - started)) + 0.5)
    repeated = notify()
    assert repeated and all(n["repeat"] and n["status"] == "firing" for n in repeated)
    assert {n["key"] for n in repeated} == keys - {"run_failed:daily_bars"}
    log = clean_stack.worker.log()
    assert "FIRING StockPulseRunFailed: daily_bars run failed" in log and "RESOLVED StockPulseRunFailed" in log
    redis_client.delete(STATE_KEY, DLQ_HISTORY_KEY, LOCK_KEY)


def test_a_dead_webhook_does_not_lose_the_alert(clean_stack: Stack, redis_client: Any) -> None:
    """Nothing delivered anywhere: the notices are not marked sent, so the next evaluation tries again."""
    from stockpulse.observability.notifier import DLQ_HISTORY_KEY, LOCK_KEY, STATE_KEY

    redis_client.delete(STATE_KEY, DLQ_HISTORY_KEY, LOCK_KEY)
    clean_stack.restart_worker(STOCKPULSE_NOTIFIER__ENABLED="true", STOCKPULSE_NOTIFIER__LOG="false",
                               STOCKPULSE_NOTIFIER__WEBHOOK_URL="http://127.0.0.1:9/nobody-listens")
    assert notify() == []
    assert redis_client.hlen(STATE_KEY) == 0
    assert "webhook delivery failed" in clean_stack.worker.log()
    redis_client.delete(STATE_KEY, DLQ_HISTORY_KEY, LOCK_KEY)
