from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stockpulse.cli", *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)


def test_help_lists_every_command() -> None:
    out = cli("--help").stdout
    for command in ("pipelines", "run", "backfill", "runs", "db", "config", "sim", "standalone"):
        assert f"  {command}" in out


def test_pipelines_lists_queue_provider_and_schedule() -> None:
    result = cli("pipelines")
    assert result.returncode == 0, result.stderr
    assert "daily_bars" in result.stdout and "historical" in result.stdout and "alpaca" in result.stdout
    assert "daily-bars-after-close" in result.stdout


def test_bad_inputs_get_clear_errors() -> None:
    unknown = cli("run", "no_such_pipeline")
    assert unknown.returncode == 2 and "unknown pipeline 'no_such_pipeline'" in unknown.stderr
    bad_symbol = cli("run", "daily_bars", "--symbols", "AAPL,DROP TABLE")
    assert bad_symbol.returncode == 2 and "invalid symbol 'DROP TABLE'" in bad_symbol.stderr
    bad_date = cli("backfill", "daily_bars", "--start", "2024-13-01", "--end", "2024-12-31")
    assert bad_date.returncode == 2 and "is not a date" in bad_date.stderr


def test_unreachable_or_unmigrated_services_get_a_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, STOCKPULSE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    runs = subprocess.run([sys.executable, "-m", "stockpulse.cli", "runs"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert runs.returncode == 1 and "no such table: pipeline_runs (run `stockpulse db upgrade`?)" in runs.stderr
    env = dict(os.environ, STOCKPULSE_REDIS_URL="redis://127.0.0.1:1/0")
    providers = subprocess.run([sys.executable, "-m", "stockpulse.cli", "providers"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
    assert providers.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in providers.stderr
    assert "Traceback" not in runs.stderr + providers.stderr
