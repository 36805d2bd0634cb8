"""monitoring/alertmanager.yml in Debian's real prometheus-alertmanager: routing, grouping, inhibition, the
Slack-compatible webhook and e-mail receivers, with a loopback webhook and SMTP sink standing in for them."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import IN_CI, ROOT
from tests.observability.recorder import RecordingServer
from tests.observability.test_prometheus import free_port

CONFIG = ROOT / "monitoring" / "alertmanager.yml"
TEMPLATES = ROOT / "monitoring" / "alertmanager-templates"


def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    if IN_CI:
        pytest.fail("prometheus-alertmanager is not installed; .ci/run installs Debian's package")
    pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")


def loopback_config(tmp_path: Path, webhook_url: str, smtp_port: int) -> Path:
    """The shipped config with its secret files, SMTP relay and templates on this machine, and group timings
    shortened from 30 s/5 min to 1 s/2 s so the test does not wait; routes and inhibitions unchanged."""
    config = yaml.safe_load(CONFIG.read_text())
    (tmp_path / "alert_webhook_url").write_text(webhook_url)
    config["global"].update(smtp_smarthost=f"127.0.0.1:{smtp_port}", smtp_require_tls=False)
    for key in ("smtp_auth_username", "smtp_auth_password_file"):  # the sink offers no AUTH
        assert config["global"].pop(key)
    config["templates"] = [str(TEMPLATES / "*.tmpl")]
    config["route"].update(group_wait="1s", group_interval="2s")
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert slack.pop("api_url_file") == "/run/secrets/alert_webhook_url"
            slack["api_url_file"] = str(tmp_path / "alert_webhook_url")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alert(**labels: str) -> dict[str, Any]:
    name = labels["alertname"]
    return {"labels": labels, "startsAt": datetime.now(UTC).isoformat(),
            "annotations": {"summary": f"{name} summary", "description": f"{name} description",
                            "runbook_url": f"docs/runbook.md#{name.lower()}"}}


def test_routing_grouping_and_inhibition_in_a_real_alertmanager(tmp_path: Path, webhook: RecordingServer,
                                                               smtp_sink: tuple[int, list[Any]]) -> None:
    smtp_port, emails = smtp_sink
    config = loopback_config(tmp_path, f"{webhook.base_url}/hooks/stockpulse", smtp_port)
    check = subprocess.run([shutil.which("amtool") or "amtool", "check-config", str(config)], capture_output=True,
                           text=True, timeout=30) if shutil.which("amtool") else None
    assert check is None or check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([alertmanager_binary(), f"--config.file={config}",
                                    f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)

        common = {"severity": "warning", "team": "data-eng"}
        requests.post(f"{url}/api/v2/alerts", timeout=5, json=[
            # Two alerts of one pipeline: one grouped ticket.
            alert(alertname="StockPulseRunFailed", pipeline="daily_bars", provider="alpaca", data_type="bars",
                  trigger="schedule", **common),
            alert(alertname="StockPulseScheduledRunMissing", pipeline="daily_bars", provider="alpaca",
                  data_type="bars", queue="historical", **common),
            # No worker on the news queue: a platform page, and the news pipeline's own alert inhibited.
            alert(alertname="StockPulseQueueUnserved", queue="news", queue_name="news", severity="critical",
                  team="platform"),
            alert(alertname="StockPulseScheduledRunMissing", pipeline="company_news", provider="finnhub",
                  data_type="news", queue="news", **common),
        ]).raise_for_status()

        deadline = time.monotonic() + 20
        while len(webhook.bodies) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(5)  # more than two group intervals: nothing else may arrive
        received = [json.loads(body) for body in webhook.bodies]
        by_channel = {m["channel"]: m for m in received}
        assert sorted(m["channel"] for m in received) == ["#platform-pages", "#stockpulse-alerts"], received
        ticket = by_channel["#stockpulse-alerts"]["attachments"][0]
        assert ticket["title"] == "[FIRING:2] warning: daily_bars"
        assert "StockPulseRunFailed" in ticket["text"] and "StockPulseScheduledRunMissing" in ticket["text"]
        assert "docs/runbook.md#stockpulserunfailed" in ticket["text"]
        assert "company_news" not in json.dumps(received)  # inhibited by the unserved queue
        page = by_channel["#platform-pages"]["attachments"][0]
        assert page["title"] == "[FIRING:1] critical: StockPulseQueueUnserved"

        deadline = time.monotonic() + 10
        while not emails and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [e.rcpt_tos for e in emails] == [["platform-oncall@localhost"]]
        assert b"Subject: [FIRING:1] critical: StockPulseQueueUnserved" in emails[0].content
        silenced = requests.get(f"{url}/api/v2/alerts", params={"filter": 'pipeline="company_news"'},
                                timeout=5).json()
        assert silenced[0]["status"]["inhibitedBy"], silenced
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
