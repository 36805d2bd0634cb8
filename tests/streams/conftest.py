from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stockpulse.config import reset_settings
from tests.conftest import Stack


@pytest.fixture()
def stream(clean_stack: Stack, sim: Any, redis_client: Any) -> Any:
    sim.stream("reset")
    for key in redis_client.scan_iter("stockpulse:stream:*"):
        redis_client.delete(key)
    yield sim
    from tests.streams.helpers import RUNNING

    for running in RUNNING:
        running.stop.set()
    for running in RUNNING:
        running.thread.join(15)
    RUNNING.clear()
    sim.stream("reset")


@pytest.fixture()
def enable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``enable("alpaca_trades", OPTION=value...)``: turn a stream pipeline on (and set options) through the
    environment, which workers started afterwards and consumers re-reading config both see."""

    def turn_on(pipeline: str, **options: Any) -> None:
        prefix = f"STOCKPULSE_PIPELINES__{pipeline.upper()}"
        monkeypatch.setenv(f"{prefix}__ENABLED", "true")
        for key, value in options.items():
            monkeypatch.setenv(f"{prefix}__OPTIONS__{key.upper()}", str(value))
        reset_settings()

    yield turn_on
    monkeypatch.undo()
    reset_settings()
