"""StockPulse: market-data ingestion on Celery.

``celery -A stockpulse ...`` finds the Celery application as ``stockpulse.app``. It is created on first
use, so the CLI can report a configuration error cleanly instead of failing at import.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        import sys

        from stockpulse.errors import ConfigError

        try:
            from stockpulse.celery_app import app
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(ConfigError.exit_code) from None
        return app
    raise AttributeError(f"module 'stockpulse' has no attribute {name!r}")
