"""A real Prometheus (Debian's package) scraping a real worker and the exporter, configured from
monitoring/prometheus.yml, and the Grafana dashboards' PromQL checked against what is really exported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from stockpulse.standalone import free_port
from tests.conftest import IN_CI, ROOT, Stack
from tests.observability.promql import dashboard_queries, metric_names, substitute_variables
from tests.observability.test_exporter import Exporter, start_exporter

pytestmark = pytest.mark.integration
START, END = date(2024, 1, 1), date(2024, 1, 31)


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found:
        return found
    if IN_CI:
        pytest.fail("prometheus is not installed; .ci/run installs Debian's `prometheus` package")
    pytest.skip("prometheus is not installed (apt-get install prometheus)")


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path):
        self.url, self.process, self.log_path = url, process, log_path

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert reply["status"] == "success", (expr, reply)
        return reply["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, check: Callable[[float | None], bool], timeout: float = 30) -> float | None:
        deadline = time.monotonic() + timeout
        while (value := self.value(expr)) is None or not check(value):
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} = {value} after {timeout}s\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        return value


def config_for_loopback(worker_port: int, exporter_port: int) -> dict[str, Any]:
    """monitoring/prometheus.yml with its jobs pointed at this machine's processes, scraped every second."""
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("alerting", None)
    # The real alert rules, evaluated against what is really exported.
    config["rule_files"] = [str(ROOT / "monitoring" / "alerts" / "*.yml")]
    targets = {"stockpulse-worker": f"127.0.0.1:{worker_port}", "stockpulse-exporter": f"127.0.0.1:{exporter_port}"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) <= set(jobs), f"monitoring/prometheus.yml lacks jobs {set(targets) - set(jobs)}"
    config["scrape_configs"] = [{**jobs[name], "static_configs": [{"targets": [target]}]}
                                for name, target in targets.items()]
    return config


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[Callable[[int, int], Prometheus]]:
    binary = prometheus_binary()
    started: list[Prometheus] = []

    def start(worker_port: int, exporter_port: int) -> Prometheus:
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config_for_loopback(worker_port, exporter_port)))
        port = free_port()
        log_path = tmp_path / "prometheus.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen([binary, f"--config.file={config_path}",
                                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                        f"--web.listen-address=127.0.0.1:{port}"],
                                       stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        prom = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
        started.append(prom)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                    return prom
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"prometheus not ready: {log_path.read_text()[-2000:]}")

    yield start
    for prom in started:
        prom.process.send_signal(signal.SIGTERM)
        prom.process.wait(20)


@pytest.fixture()
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    exp = start_exporter(tmp_path, worker_timeout_s="4", status_interval_s="0", inspect_interval_s="2")
    yield exp
    exp.process.send_signal(signal.SIGTERM)
    exp.process.wait(10)


@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_prometheus_sees_a_run_and_a_killed_worker_and_every_dashboard_query_is_real(
        clean_stack: Stack, sim, exporter: Exporter, prometheus: Callable[[int, int], Prometheus]) -> None:
    worker_port = free_port()
    worker = clean_stack.restart_worker(STOCKPULSE_METRICS__PORT=str(worker_port))
    node = f"test-{clean_stack.backend}-custom@{socket.gethostname()}"
    prom = prometheus(worker_port, exporter.port)
    prom.wait_for('up{job="stockpulse-worker"}', lambda v: v == 1)
    prom.wait_for('up{job="stockpulse-exporter"}', lambda v: v == 1)

    sim.fault("alpaca", "503", times=1)  # a retry, so retry series exist
    run = clean_stack.run("daily_bars", start=START, end=END)
    assert run.status == "succeeded"
    sim.fault("alpaca", "malformed", times=2)  # and dead letters
    assert clean_stack.run("daily_bars", start=date(2024, 2, 1), end=date(2024, 2, 29)).status == "failed"
    loaded = prom.wait_for('sum(stockpulse_records_total{stage="load", outcome="loaded", pipeline="daily_bars"})',
                           lambda v: v == run.records_loaded)
    assert loaded == run.records_loaded
    prom.wait_for('sum(stockpulse_runs_total{pipeline="daily_bars", status="succeeded"})', lambda v: v == 1)
    prom.wait_for('sum(celery_task_succeeded_total{name="stockpulse.pipeline.load"})', lambda v: v == 2)
    prom.wait_for('sum(stockpulse_dead_letters_total{pipeline="daily_bars"})', lambda v: v == 2)
    prom.wait_for('stockpulse_dlq_depth', lambda v: v == 2)
    prom.wait_for('count(stockpulse_worker_process_cpu_seconds_total{process="pool"})', lambda v: v == 2)
    prom.wait_for('sum(stockpulse_provider_requests_total{provider="alpaca", status="200"})', lambda v: v >= 2)
    prom.wait_for('stockpulse_quarantine_records{pipeline="daily_bars"}', lambda v: v == 0)

    # Every metric name any dashboard panel uses is really exported (by a worker or the exporter), and
    # every panel query parses and evaluates in Prometheus.
    exported = {name for (name, _labels) in exporter.samples()}
    from tests.observability.test_metrics import scrape

    exported |= {name for (name, _labels) in scrape(worker_port)}
    exported |= {"up"}
    checked = 0
    for dashboard, panel, expr in dashboard_queries(ROOT / "monitoring" / "grafana" / "dashboards"):
        missing = metric_names(expr) - exported
        assert not missing, f"{dashboard} / {panel}: {expr} uses metrics nobody exports: {sorted(missing)}"
        prom.query(substitute_variables(expr))
        checked += 1
    assert checked >= 20

    # Every alert rule evaluates without error against the live series, and the failed run fires its alert
    # (a retry that succeeded does not: the first run's 503 was retried).
    def rule_groups() -> list[dict[str, Any]]:
        return requests.get(f"{prom.url}/api/v1/rules", timeout=5).json()["data"]["groups"]

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(r.get("lastEvaluation", "").startswith("2")
                                                  and not r["lastEvaluation"].startswith("0001")
                                                  for g in rule_groups() for r in g["rules"]):
        time.sleep(0.5)
    broken = [(r["name"], r.get("lastError")) for g in rule_groups() for r in g["rules"] if r["health"] != "ok"]
    assert not broken and sum(len(g["rules"]) for g in rule_groups()) >= 20, broken
    failed = prom.wait_for('count(ALERTS{alertname="StockPulseRunFailed", pipeline="daily_bars", '
                           'alertstate="firing"})', lambda v: v == 1)
    assert failed == 1

    worker.kill(signal.SIGKILL)
    prom.wait_for(f'celery_worker_up{{hostname="{node}"}}', lambda v: v == 0, timeout=20)
    prom.wait_for('up{job="stockpulse-worker"}', lambda v: v == 0, timeout=20)


def test_dashboards_are_valid_grafana_json_with_the_datasource_provisioned() -> None:
    grafana = ROOT / "monitoring" / "grafana"
    titles = set()
    for path in sorted((grafana / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        titles.add(board["title"])
        assert board["uid"] and board["panels"], path
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "prometheus", (path.name, panel["title"])
    assert {"StockPulse pipelines", "StockPulse Celery", "StockPulse resources"} <= titles
    datasources = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["uid"] == "prometheus"
    providers = yaml.safe_load((grafana / "provisioning" / "dashboards" / "stockpulse.yml").read_text())
    assert providers["providers"][0]["options"]["path"]
    assert os.path.basename(providers["providers"][0]["options"]["path"].rstrip("/")) == "dashboards"


def test_committed_dashboards_are_what_the_builder_writes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dashboards",
                                                  ROOT / "monitoring" / "grafana" / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.OUT = tmp_path
    module.main()
    for built in tmp_path.glob("*.json"):
        committed = ROOT / "monitoring" / "grafana" / "dashboards" / built.name
        assert committed.read_text() == built.read_text(), \
            f"{committed} is out of date: run python monitoring/grafana/build_dashboards.py"


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{pipeline=~"$pipeline"}[$__rate_interval])))',
     {"a_bucket"}),
    ("time() - b_seconds{x=\"y\"}", {"b_seconds"}),
    ("sum by (status) (increase(c_total[5m])) / on(status) group_left(kind) d_info", {"c_total", "d_info"}),
    ('e == 1 and f offset 1h', {"e", "f"}),
])
def test_metric_names_of_a_promql_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
