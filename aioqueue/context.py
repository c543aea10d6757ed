"""Inside a running task: which job it is, and what it may ask of its worker.

A task calls :func:`job_context` to learn its job's id and attempt, to report progress (which
producers follow with ``async for p in job.progress()``, and which a retried or snoozed job
finds again as its checkpoint), to extend its own timeout, and to ask for a retry or a snooze
with a delay of its choosing::

    @queue.task(timeout=60)
    def resize(paths: list[str]) -> int:
        ctx = aioqueue.job_context()
        start = ctx.progress.state if ctx.progress else 0  # resume after a retry
        for i in range(start, len(paths)):
            if upstream_busy():
                ctx.snooze(30)  # again in 30 s; this attempt does not count
            shrink(paths[i])
            ctx.report_progress((i + 1) / len(paths), paths[i], state=i + 1)
        return len(paths)

Reports are sent to the supervisor at most every :data:`MIN_INTERVAL` seconds per job; one
made in between is sent when the interval is up (or when the job ends), so the last one always
arrives and a tight loop costs no more than a few frames a second.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from . import wire
from .errors import InvalidOptions, SerializationError

__all__ = ("MIN_INTERVAL", "JobContext", "Retry", "Snooze", "job_context")

MIN_INTERVAL = 0.05  # seconds between two progress frames of one job

_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("aioqueue_job")


class Retry(Exception):  # a request, not an error
    """Raised in a task to end this attempt as failed and retry in ``delay`` seconds.

    It counts as an attempt: once the job's retries are spent, it is dead-lettered with
    ``reason``. Raise it, or call :meth:`JobContext.retry`.
    """

    def __init__(self, delay: float = 0.0, reason: str = "") -> None:
        _check_delay(delay)
        self.delay = float(delay)
        self.reason = reason
        super().__init__(reason or f"the task asked for a retry in {self.delay:g} s")


class Snooze(Exception):  # a request, not an error
    """Raised in a task to run the job again in ``delay`` seconds without using up an attempt
    (waiting for a resource, polling something slow). Or call :meth:`JobContext.snooze`."""

    def __init__(self, delay: float) -> None:
        _check_delay(delay)
        self.delay = float(delay)
        super().__init__(f"the task snoozed for {self.delay:g} s")


def _check_delay(delay: float) -> None:
    if not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
        raise InvalidOptions(f"delay must be a finite number of seconds >= 0, got {delay!r}")


class JobContext:
    """The running job, as its task sees it (see :func:`job_context`).

    :ivar id: the job's id.
    :ivar attempt: this attempt's number, 1 for the first.
    :ivar task: the task's name.
    :ivar queue: the queue's name.
    :ivar progress: the last progress reported, by this attempt or an earlier one (a
        checkpoint to resume from), or None.
    """

    __slots__ = (
        "id", "attempt", "task", "queue", "progress", "_send", "_extend", "_lock", "_next",
        "_pending", "_timer", "_closed",
    )  # fmt: skip

    def __init__(
        self,
        id: str,
        attempt: int,
        task: str,
        queue: str,
        progress: wire.Progress | None,
        send: Callable[[bytes], None],
        extend: Callable[[float], None],
    ) -> None:
        self.id = id
        self.attempt = attempt
        self.task = task
        self.queue = queue
        self.progress = progress
        self._send = send
        self._extend = extend
        self._lock = threading.Lock()
        self._next = 0.0  # when the next frame may go
        self._pending: bytes | None = None  # a report held back by the interval
        self._timer: threading.Timer | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"JobContext({self.id!r}, task={self.task!r}, attempt={self.attempt})"

    def report_progress(
        self, fraction: float | None = None, message: str = "", *, state: object = None
    ) -> None:
        """Say how far the job is: ``fraction`` from 0 to 1, ``message`` in words, and
        ``state``, a checkpoint of plain data that a retried or snoozed run of this job finds
        in :attr:`progress`.

        :raises InvalidOptions: ``fraction`` is not a number from 0 to 1.
        :raises SerializationError: ``state`` can't be encoded.
        """
        if fraction is not None and not (
            isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0
        ):
            raise InvalidOptions(f"fraction must be a number from 0 to 1, got {fraction!r}")
        report = wire.Progress(
            fraction=None if fraction is None else float(fraction), message=str(message),
            state=state, attempt=self.attempt, at=time.time(),
        )  # fmt: skip
        try:
            data = wire.encode(report)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"progress state can't be encoded: {exc}") from None
        self.progress = report
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            if now >= self._next:
                self._next = now + MIN_INTERVAL
                self._pending = None
                self._send(data)
            else:
                self._pending = data
                if self._timer is None:
                    self._timer = threading.Timer(self._next - now, self._flush)
                    self._timer.daemon = True
                    self._timer.start()

    def extend_timeout(self, seconds: float) -> None:
        """Let the job run until at least ``seconds`` from now, if its timeout would end it
        sooner (a job without a timeout is unaffected)."""
        _check_delay(seconds)
        self._extend(float(seconds))

    def retry(self, delay: float = 0.0, reason: str = "") -> NoReturn:
        """End this attempt as failed and retry in ``delay`` seconds (see :class:`Retry`)."""
        raise Retry(delay, reason)

    def snooze(self, delay: float) -> NoReturn:
        """Run the job again in ``delay`` seconds; this attempt does not count (see
        :class:`Snooze`)."""
        raise Snooze(delay)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending is not None and not self._closed:
                self._next = time.monotonic() + MIN_INTERVAL
                data, self._pending = self._pending, None
                self._send(data)

    def close(self) -> None:
        """The job ended: send the report held back, if any; later ones are dropped."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._pending is not None and not self._closed:
                data, self._pending = self._pending, None
                self._send(data)
            self._closed = True


def job_context() -> JobContext:
    """The job the calling task runs for.

    :raises RuntimeError: when called outside a task that a worker runs.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("job_context() is only available inside a task a worker runs") from None


def enter(ctx: JobContext) -> contextvars.Token[JobContext]:
    """Make ``ctx`` the current job's context (in a worker's child)."""
    return _current.set(ctx)


def leave(token: contextvars.Token[JobContext]) -> None:
    """Undo :func:`enter`."""
    _current.reset(token)
