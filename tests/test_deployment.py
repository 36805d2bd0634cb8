"""The deployable stack's files agree with each other: compose, workers/workers.yaml, prometheus.yml."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from stockpulse.workers import load_worker_groups
from tests.conftest import IN_CI, ROOT

COMPOSE = ROOT / "docker" / "docker-compose.yml"


def test_every_worker_group_is_a_compose_service_and_a_scrape_target() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    worker_targets = {t for sc in jobs["stockpulse-worker"]["static_configs"] for t in sc["targets"]}
    groups = load_worker_groups()
    assert groups
    for name in groups:
        service = services[f"worker-{name}"]
        assert service["command"] == ["stockpulse", "worker", name]
        assert f"worker-{name}:9810" in worker_targets
    assert worker_targets == {f"worker-{name}:9810" for name in groups}
    assert {"exporter:9808"} == {t for sc in jobs["stockpulse-exporter"]["static_configs"] for t in sc["targets"]}
    assert "flower" in jobs and "basic_auth" in jobs["flower"]
    for needed in ("redis", "postgres", "beat", "flower", "exporter", "prometheus", "alertmanager", "grafana",
                   "otel-collector", "jaeger"):
        assert needed in services, needed
    assert "noeviction" in services["redis"]["command"]
    assert "STOCKPULSE_FLOWER__BASIC_AUTH_FILE" in services["flower"]["environment"]


def test_compose_file_is_valid() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if IN_CI:
            pytest.fail("docker-compose is not installed; .ci/run installs Debian's `docker-compose` package")
        pytest.skip("docker-compose is not installed")
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                            timeout=60, cwd=COMPOSE.parent)
    assert result.returncode == 0, result.stderr


def test_traces_flow_from_every_process_through_the_collector_to_jaeger() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    env = compose["x-stockpulse"]["environment"]
    assert env["STOCKPULSE_TRACING__ENABLED"] == "true"
    assert env["STOCKPULSE_TRACING__ENDPOINT"] == "http://otel-collector:4318/v1/traces"
    collector = yaml.safe_load((ROOT / "monitoring" / "otel-collector.yaml").read_text())
    mount = compose["services"]["otel-collector"]["volumes"][0]
    assert mount.startswith("../monitoring/otel-collector.yaml:")
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    traces = collector["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and set(traces["processors"]) <= set(collector["processors"])
    [exporter] = traces["exporters"]
    assert collector["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
