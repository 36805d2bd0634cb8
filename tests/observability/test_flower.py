"""Flower starts only with authentication unless it stays on loopback; the password never shows in ps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from stockpulse.standalone import free_port
from tests.conftest import ROOT

PASSWORD = "flower-pass-5e1d"


def stockpulse(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stockpulse.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_flower_refuses_a_public_address_without_basic_auth() -> None:
    result = stockpulse("flower", "--address", "0.0.0.0")
    assert result.returncode == 2
    assert "flower.basic_auth: required when Flower listens on 0.0.0.0" in result.stderr


def test_basic_auth_is_checked_as_config_and_redacted() -> None:
    bad = stockpulse("config", "show", STOCKPULSE_FLOWER__BASIC_AUTH="no-colon-here")
    assert bad.returncode == 2 and "flower.basic_auth" in bad.stderr
    shown = stockpulse("config", "show", STOCKPULSE_FLOWER__BASIC_AUTH=f"admin:{PASSWORD}")
    assert shown.returncode == 0 and PASSWORD not in shown.stdout and "basic_auth: '***'" in shown.stdout


@pytest.mark.integration
def test_flower_with_basic_auth_answers_only_with_the_credentials() -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "stockpulse.cli", "flower", "--address", "127.0.0.1",
                                "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "STOCKPULSE_FLOWER__BASIC_AUTH": f"admin:{PASSWORD}"},
                               start_new_session=True)
    try:
        deadline, reply = time.monotonic() + 60, None
        while time.monotonic() < deadline and reply is None:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                reply = requests.get(f"http://127.0.0.1:{port}/workers", timeout=5)
            except requests.ConnectionError:
                time.sleep(0.3)
        assert reply is not None and reply.status_code == 401
        assert requests.get(f"http://127.0.0.1:{port}/workers", auth=("admin", "wrong"), timeout=5).status_code == 401
        assert requests.get(f"http://127.0.0.1:{port}/workers", auth=("admin", PASSWORD), timeout=5).status_code == 200
        cmdlines = [" ".join(p.cmdline()) for p in [psutil.Process(process.pid),
                                                     *psutil.Process(process.pid).children(recursive=True)]]
        assert not any(PASSWORD in c for c in cmdlines), cmdlines
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
