"""Log lines as text or as JSON objects, and the fields that job events carry.

The library only logs; the command line picks the format (:func:`configure`). Job events pass
their fields with ``extra=`` (:func:`job_fields`): text lines read as before, and JSON lines
carry them as fields of their own.

A completed job's line goes through :class:`Completions`: logged in a batch at most
:data:`BATCH_S` later, with the time the job completed, and before any other line of the
worker's logger, so that lines keep their order. One line logged on its own between other work
cost the supervisor 60-90 µs of CPU on the project's 2-core VM, much of a job's whole cost
there, as the logging code ran cold each time; in batches of 0.2 s, 10-40 µs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import Held

__all__ = ("BATCH_S", "JOB_FIELDS", "Completions", "JsonFormatter", "configure", "job_fields")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: The fields of a job event, in the order a JSON line gives them.
JOB_FIELDS = ("event", "job_id", "task", "attempt", "duration_s", "worker")
BATCH_S = 0.2  # how late a completed job's line may be logged


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


class Completions:
    """The lines of completed jobs, ``  0.12s ✓ task job <id>`` at INFO on ``logger``, logged
    in batches (see the module's text); :meth:`flush` logs what waits at once.

    Used as a context manager: within, it is a filter of ``logger`` that logs the waiting
    lines before any other; on the way out it logs what waits and leaves the logger.
    """

    def __init__(self, logger: logging.Logger, worker: str) -> None:
        self.log = logger
        self.worker = worker
        self._waiting: list[tuple[float, Held]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing = False

    def __enter__(self) -> Completions:
        self.log.addFilter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()
        self.log.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        """Another line is logged: the waiting ones go first."""
        if self._waiting and not self._flushing:
            self.flush()
        return True

    def add(self, held: Held) -> None:
        """``held`` completed now (nothing is kept unless INFO is logged)."""
        if not self.log.isEnabledFor(logging.INFO):
            return
        self._waiting.append((time.time(), held))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        self._flushing = True
        try:
            self._log(waiting)
        finally:
            self._flushing = False

    def _log(self, waiting: list[tuple[float, Held]]) -> None:
        log = self.log
        for at, held in waiting:
            record = log.makeRecord(
                log.name, logging.INFO, "(unknown file)", 0, "%6.2fs ✓ %s job %s",
                (held.run_s or 0.0, held.task, held.id), None,
                extra=job_fields(held, self.worker, "completed"),
            )  # fmt: skip
            record.created = at  # when it completed, not when its batch is logged
            record.msecs = int((at - int(at)) * 1000) + 0.0
            record.relativeCreated = (at - logging._startTime) * 1000  # type: ignore[attr-defined]
            log.handle(record)


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


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, the date and time formatted once per second."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def configure(level: str, fmt: str) -> None:
    """Send the root logger's records to stderr at ``level``, as ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
