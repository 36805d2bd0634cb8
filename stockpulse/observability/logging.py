"""Process logging: JSON lines (python-json-logger) or a console format, chosen by ``logging.format``.

Inside a Celery task every record carries the task id and name and, for pipeline stages, the run id,
batch, pipeline and stage, bound once from the task's request rather than passed through every call.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

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
        return True


class UTCJsonFormatter(JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name


class ConsoleFormatter(logging.Formatter):
    _standard = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "context"}

    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")}
        record.context = (" " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))) if extras else ""
        return super().format(record)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(UTCJsonFormatter("%(message)s", rename_fields={"levelname": "level"}))
    else:
        handler.setFormatter(ConsoleFormatter(CONSOLE_FORMAT))
    handler.addFilter(TaskContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
