from __future__ import annotations

import io
import json
import logging

import pytest

from stockpulse.observability.logging import configure_logging


@pytest.fixture()
def captured():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_json_lines_with_utc_timestamp_and_extras(captured) -> None:
    configure_logging("INFO", "json", captured)
    logging.getLogger("stockpulse.test").info("loaded %d rows", 5, extra={"run_id": "r1", "stage": "load"})
    record = json.loads(captured.getvalue().splitlines()[-1])
    assert record["message"] == "loaded 5 rows" and record["level"] == "INFO" and record["logger"] == "stockpulse.test"
    assert record["run_id"] == "r1" and record["stage"] == "load" and record["timestamp"].endswith("+00:00")


def test_secrets_are_redacted_from_messages_and_tracebacks(captured) -> None:
    from stockpulse.config import get_settings

    key = get_settings().provider("alpaca").api_key  # "test-key" in the test configuration
    configure_logging("DEBUG", "console", captured)
    log = logging.getLogger("urllib3.connectionpool")
    log.debug("GET /query?function=X&apikey=SECRET123&symbol=IBM")
    try:
        raise RuntimeError(f"failed with key {key}")
    except RuntimeError:
        log.exception("request to %s failed", f"https://x/?token={key}")
    out = captured.getvalue()
    assert "SECRET123" not in out and "apikey=***" in out
    assert key not in out and "failed with key ***" in out
