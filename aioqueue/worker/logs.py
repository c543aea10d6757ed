"""Log lines as text or as JSON objects, and the fields that job events carry.

The library only logs; the command line picks the format (:func:`configure`). Job events pass
their fields with ``extra=`` (:func:`job_fields`): text lines read as before, and JSON lines
carry them as fields of their own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import Held

__all__ = ("JOB_FIELDS", "JsonFormatter", "configure", "job_fields")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: The fields of a job event, in the order a JSON line gives them.
JOB_FIELDS = ("event", "job_id", "task", "attempt", "duration_s", "worker")


def job_fields(held: Held, worker: str, event: str) -> dict[str, Any]:
    """The ``extra=`` of a log line about ``held``: ``event`` is started, completed, retried,
    dead or lost; ``duration_s`` is the child's run time, when it ran."""
    fields: dict[str, Any] = {
        "event": event,
        "job_id": held.id,
        "task": held.task,
        "attempt": held.attempts,
        "worker": worker,
    }
    if held.run_s is not None:
        fields["duration_s"] = round(held.run_s, 6)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    then a job event's fields, and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in JOB_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str, fmt: str) -> None:
    """Send the root logger's records to stderr at ``level``, as ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
