"""Process logging: JSON lines (python-json-logger) or a console format, chosen by ``logging.format``.

Inside a Celery task every record carries the task id and name and, for pipeline stages, the run id,
batch, pipeline and stage, bound once from the task's request rather than passed through every call; in a
traced run, every record carries the ``trace_id`` and ``span_id`` of the span it was logged in.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from stockpulse.observability import tracing

CONTEXT_FIELDS = ("run_id", "batch_no", "pipeline")
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s"


class TaskContextFilter(logging.Filter):
    """Adds the current Celery task's ids to every record logged while it runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery import current_task

        task = current_task
        request = getattr(task, "request", None) if task else None
        if request is not None and getattr(request, "id", None):
            record.task_id = request.id
            record.task_name = task.name
            record.attempt = (request.retries or 0) + 1
            kwargs = request.kwargs or {}
            for name in CONTEXT_FIELDS:
                if name in kwargs and not hasattr(record, name):
                    setattr(record, name, kwargs[name])
            stage = getattr(task, "stage", "")
            if stage and not hasattr(record, "stage"):
                record.stage = stage
        ids = tracing.current_ids()  # None at once when tracing is off
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


class RedactSecretsFilter(logging.Filter):
    """Configured secrets and key-looking query parameters never reach a log line, whoever logs them
    (our code, requests/urllib3 at DEBUG, Celery's task traces)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from stockpulse.config import redact_text

        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class _RedactedExceptions:
    def formatException(self, ei: Any) -> str:
        from stockpulse.config import redact_text

        return redact_text(super().formatException(ei))  # type: ignore[misc]


class UTCJsonFormatter(_RedactedExceptions, JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name


class ConsoleFormatter(_RedactedExceptions, logging.Formatter):
    _standard = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "context"}

    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")}
        record.context = (" " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))) if extras else ""
        return super().format(record)


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(UTCJsonFormatter("%(message)s", rename_fields={"levelname": "level"}))
    else:
        handler.setFormatter(ConsoleFormatter(CONSOLE_FORMAT))
    handler.addFilter(TaskContextFilter())
    handler.addFilter(RedactSecretsFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
