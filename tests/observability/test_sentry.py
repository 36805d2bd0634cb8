"""Sentry with the real SDK in a real worker and beat, sending to a loopback endpoint that keeps every
envelope: tags on the final failure, nothing for a retry that succeeded, cron check-ins, no secret."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SimControl, Stack
from tests.observability.recorder import RecordingServer, recording_server

pytestmark = pytest.mark.integration
CANARY = "canary-KEY-7Hq2x9"


class SentryEndpoint:
    """What the SDK posts to ``/api/<project>/envelope/`` of a loopback "Sentry", decoded."""

    def __init__(self, server: RecordingServer):
        self.server = server

    @property
    def dsn(self) -> str:
        return self.server.base_url.replace("http://", "http://publickey@") + "/1"

    @property
    def raw(self) -> list[bytes]:
        return list(self.server.bodies)

    @property
    def items(self) -> list[tuple[dict[str, Any], Any]]:
        return [item for body in self.raw for item in parse_envelope(body)]

    def of_type(self, kind: str) -> list[Any]:
        return [payload for header, payload in self.items if header.get("type") == kind]


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    """Sentry's envelope: a header line, then per item a header line and a payload (``length`` bytes when
    the header says, else up to the newline)."""
    _, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[:header["length"]], rest[header["length"] + 1:]
        else:
            payload, _, rest = rest.partition(b"\n")
        try:
            items.append((header, json.loads(payload)))
        except ValueError:
            items.append((header, payload))
    return items


@pytest.fixture()
def sentry_endpoint() -> Iterator[SentryEndpoint]:
    with recording_server() as server:
        yield SentryEndpoint(server)


def wait_until(check: Any, what: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.2)


def test_final_failure_is_reported_with_tags_and_no_secret_but_a_retry_is_not(
        clean_stack: Stack, sim: SimControl, sentry_endpoint: SentryEndpoint) -> None:
    clean_stack.restart_worker(STOCKPULSE_SENTRY__DSN=sentry_endpoint.dsn, STOCKPULSE_STAGES__FETCH__MAX_RETRIES="1",
                               STOCKPULSE_PROVIDERS__ALPHAVANTAGE__API_KEY=CANARY,
                               STOCKPULSE_PROVIDERS__ALPACA__API_KEY=CANARY)
    sim.fault("alpaca", "503", times=1)  # one transient failure, retried, then the run succeeds
    retried = clean_stack.run("daily_bars", symbols=["AAPL"], start=date(2024, 1, 2), end=date(2024, 1, 31))
    assert retried.status == "succeeded"
    sim.fault("alphavantage", "malformed", times=5)  # every attempt fails: the run fails for good
    failed = clean_stack.run("alphavantage_daily_bars", symbols=["IBM"], start=date(2024, 1, 2),
                             end=date(2024, 1, 31))
    assert failed.status == "failed"

    def errors_for(run_id: str) -> list[dict[str, Any]]:
        return [e for e in sentry_endpoint.of_type("event") if e.get("tags", {}).get("run_id") == run_id]

    wait_until(lambda: errors_for(failed.id), "the failure's event")
    time.sleep(2)  # anything else the worker would send for these runs arrives meanwhile
    [event] = errors_for(failed.id)  # once: the "failed for good" log line is not a second event
    tags = event["tags"]
    assert (tags["pipeline"], tags["provider"], tags["data_type"], tags["stage"], tags["component"]) == \
        ("alphavantage_daily_bars", "alphavantage", "bars", "fetch", "worker")
    assert event["environment"] == "test" and event["release"].startswith("stockpulse@")
    assert event["exception"]["values"][-1]["type"] in ("TransientError", "PermanentError")
    assert errors_for(retried.id) == []  # the retry that succeeded is not an error
    sent = b"".join(sentry_endpoint.raw)
    assert CANARY.encode() not in sent  # frame variables, task arguments, messages: all scrubbed
    assert b"[Filtered]" in sent  # and the scrubber did have something to remove


def test_beat_schedules_are_sentry_cron_monitors(clean_stack: Stack, sentry_endpoint: SentryEndpoint,
                                                 redis_client: Any, tmp_path: Path) -> None:
    for key in list(redis_client.scan_iter("stockpulse:redbeat*")) + list(redis_client.scan_iter("stockpulse:schedules:*")):
        redis_client.delete(key)
    clean_stack.restart_worker(STOCKPULSE_SENTRY__DSN=sentry_endpoint.dsn)
    schedule = tmp_path / "beat_schedule.yaml"
    schedule.write_text("timezone: America/New_York\nschedules:\n"
                        "  sweep-often:\n    task: stockpulse.maintenance.sweep_stale_runs\n    every: 1m\n"
                        "  too-often:\n    task: stockpulse.maintenance.sweep_stale_runs\n    every: 20s\n")
    env = dict(os.environ, STOCKPULSE_BEAT_SCHEDULE_PATH=str(schedule), STOCKPULSE_SENTRY__DSN=sentry_endpoint.dsn)
    with open(tmp_path / "beat.log", "wb") as log:
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "stockpulse", "beat", "-l", "INFO",
                                 "--max-interval", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        from redbeat.schedulers import RedBeatSchedulerEntry

        from stockpulse.celery_app import app
        from stockpulse.schedules import Schedules

        Schedules(app)  # sets up RedBeat's configuration on the app
        key = RedBeatSchedulerEntry.generate_key(app, "sweep-often")
        wait_until(lambda: redis_client.exists(key), "beat to seed its entries")
        # Make the one-minute entry due now instead of a minute after beat started.
        RedBeatSchedulerEntry.from_key(key, app=app).reschedule(datetime.now(UTC) - timedelta(minutes=2))

        def check_ins(status: str) -> list[dict[str, Any]]:
            return [c for c in sentry_endpoint.of_type("check_in")
                    if c.get("monitor_slug") == "sweep-often" and c.get("status") == status]

        wait_until(lambda: check_ins("ok"), lambda: f"an ok check-in from the worker; got {sentry_endpoint.items!r:.2000}; "
                   f"beat log: {(tmp_path / 'beat.log').read_text()[-2000:]}", timeout=45)
        started = check_ins("in_progress")
        assert started and started[0]["monitor_config"]["schedule"] == {"type": "interval", "value": 1,
                                                                        "unit": "minute"}
        # A schedule firing more often than Sentry's one-minute resolution is not a monitor.
        assert not [c for c in sentry_endpoint.of_type("check_in") if c.get("monitor_slug") == "too-often"]
        assert {c["check_in_id"] for c in check_ins("ok")} <= {c["check_in_id"] for c in started}
        assert CANARY.encode() not in b"".join(sentry_endpoint.raw)
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(30)
        for key in list(redis_client.scan_iter("stockpulse:redbeat*")) + list(redis_client.scan_iter("stockpulse:schedules:*")):
            redis_client.delete(key)
