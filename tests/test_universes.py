"""Symbol universes from config lists, files and database tables, re-read by the next run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from stockpulse.config import load_settings
from stockpulse.errors import ConfigError
from tests.conftest import Stack, table_rows


def settings_with(tmp_path: Path, universe: str) -> object:
    config = tmp_path / "c.yaml"
    config.write_text(f"symbols:\n  watch: {universe}\npipelines:\n  daily_bars:\n    data_type: bars\n"
                      "    provider: alpaca\n    symbols: watch\n")
    return load_settings({"STOCKPULSE_CONFIG": str(config)}, root=tmp_path)


def test_file_one_per_line_or_csv_and_reread_when_changed(tmp_path: Path) -> None:
    (tmp_path / "watch.txt").write_text("# my watchlist\naapl\n\nMSFT\nAAPL\n")
    settings = settings_with(tmp_path, "{file: watch.txt}")
    pipe = settings.pipeline("daily_bars")
    assert pipe.symbols == ("AAPL", "MSFT")  # upper-cased, de-duplicated, comments skipped
    (tmp_path / "watch.txt").write_text("Name,Symbol,Weight\nApple,AAPL,0.5\n\"Berkshire, B\",BRK.B,0.5\n")
    assert pipe.symbols == ("AAPL", "BRK.B")  # the same settings object sees the edit
    (tmp_path / "watch.txt").write_text("AAPL\nnot a ticker\n")
    with pytest.raises(ConfigError, match=r"symbols\.watch \(file .*watch\.txt\): line 2: 'not a ticker'"):
        _ = pipe.symbols


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"symbols\.watch: symbols\.watch: cannot read .*nope\.txt"):
        settings_with(tmp_path, "{file: nope.txt}")
    with pytest.raises(ConfigError, match=r"symbols\.watch: must be a list of tickers, \{file: path\}"):
        settings_with(tmp_path, "{url: http://example.com}")


@pytest.mark.integration
def test_table_universe_and_worker_picks_up_changes_without_restart(clean_stack: Stack, tmp_path: Path) -> None:
    from stockpulse.db.engine import get_engine
    from stockpulse.pipeline.runs import get_run
    from stockpulse.pipeline.tasks import run as run_task

    with get_engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS watchlist"))
        conn.execute(text("CREATE TABLE watchlist (symbol VARCHAR(20), note VARCHAR(40))"))
        conn.execute(text("INSERT INTO watchlist VALUES ('BTC-USD', 'first')"))
    try:
        env = {"STOCKPULSE_SYMBOLS__WATCH__TABLE": "watchlist",
               "STOCKPULSE_PIPELINES__CRYPTO_DAILY_BARS__SYMBOLS": "watch"}
        clean_stack.restart_worker(**env)

        def scheduled_run() -> object:
            # As beat does: the worker resolves the universe when the run starts.
            before = {r.id for r in table_rows("pipeline_runs")}
            run_task.apply_async(kwargs={"pipeline": "crypto_daily_bars", "start": "2024-01-01",
                                         "end": "2024-01-10", "trigger": "schedule"})
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                new = [r.id for r in table_rows("pipeline_runs") if r.id not in before]
                if new:
                    return clean_stack.wait(new[0])
                time.sleep(0.1)
            raise AssertionError(clean_stack.worker.log()[-3000:])

        first = scheduled_run()
        assert first.status == "succeeded" and first.params["symbols"] == ["BTC-USD"]
        with get_engine().begin() as conn:
            conn.execute(text("INSERT INTO watchlist VALUES ('ETH-USD', 'added')"))
        second = scheduled_run()
        assert second.status == "succeeded" and second.params["symbols"] == ["BTC-USD", "ETH-USD"]

        with get_engine().begin() as conn:
            conn.execute(text("INSERT INTO watchlist VALUES ('eth usd', 'typo')"))
        run_task.apply_async(kwargs={"pipeline": "crypto_daily_bars"})
        deadline = time.monotonic() + 20
        while "is not a ticker" not in clean_stack.worker.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "symbols.watch (table watchlist.symbol): row 3: 'eth usd' is not a ticker" in clean_stack.worker.log()
        assert get_run(second.id).status == "succeeded"
    finally:
        with get_engine().begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS watchlist"))
