"""Prometheus alert rules (monitoring/alerts/): valid, unit-tested with promtool, and each documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import IN_CI, ROOT

ALERTS = ROOT / "monitoring" / "alerts"
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if IN_CI:
        pytest.fail("promtool is not installed; .ci/run installs Debian's `prometheus` package, which has it")
    pytest.skip("promtool is not installed (apt-get install prometheus)")


def alert_rules() -> list[dict]:
    rules = []
    for path in sorted(ALERTS.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def test_rules_are_valid() -> None:
    files = sorted(str(p) for p in ALERTS.glob("*.yml"))
    result = subprocess.run([promtool(), "check", "rules", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (ALERTS / "tests").glob("*.yml"))
    result = subprocess.run([promtool(), "test", "rules", *tests], capture_output=True, text=True, timeout=120,
                            cwd=ALERTS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tested: dict[str, set[bool]] = {}
    for path in (ALERTS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for rule in alert_rules():
        assert tested.get(rule["alert"]) == {True, False}, f"{rule['alert']}: needs a firing and a silent case"


def test_every_alert_has_severity_team_text_and_a_runbook_section() -> None:
    anchors = {re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
               for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["labels"]["team"], name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        link = rule["annotations"]["runbook_url"]
        assert link == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbook.md has no '## {name}' section"


def test_compose_mounts_the_alert_rules() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../monitoring/alerts:/etc/prometheus/alerts:ro" in mounts
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert "/etc/prometheus/alerts/*.yml" in prometheus["rule_files"]
    assert Path(ROOT / "monitoring" / "alerts").is_dir()
