"""A handle to one submitted job (``Job``) and the states it can be in (``JobStatus``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import msgspec

from . import progress, wire
from .errors import AioqueueError, JobCancelled, JobFailed, ResultTimeout

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ("Job", "JobStatus")

R = TypeVar("R")

#: Where a job is: waiting (``pending``, ``scheduled``), ``running``, or finished: ``complete``,
#: ``failed`` (its last attempt failed), ``cancelled`` (cancelled before it started, or stopped
#: while it ran), ``dead`` (in the dead-letter queue); ``unknown`` when the queue has no such
#: job (or its result expired).
JobStatus = Literal[
    "pending", "scheduled", "running", "complete", "failed", "cancelled", "dead", "unknown"
]

_WAITING: frozenset[str] = frozenset({"pending", "scheduled", "running", "dead", "unknown"})


def new_job_id() -> str:
    """A job id that sorts by creation time (so jobs of one priority run in submit order)."""
    return f"{time.time_ns():016x}{os.urandom(5).hex()}"


def status_of(state: str, outcome: bytes | None) -> JobStatus:
    """The status of a job from the status script's reply: its state and, once finished, the
    stored outcome, which tells a completed job from a failed or a cancelled one."""
    if state == "finished" and outcome is not None:
        o = wire.decode_outcome(outcome)
        return "complete" if o.ok else "cancelled" if o.cancelled else "failed"
    if state in _WAITING:
        return state  # type: ignore[return-value]
    raise AioqueueError(f"unexpected job state {state!r} from the status script")


class Job(Generic[R]):
    """A handle to a submitted job. ``await job.result()`` gives its return value.

    :ivar id: the job's id; ``queue.job(id)`` makes a handle to it in any process.
    :ivar created: False when a de-duplication key matched an earlier job, which this handle
        points to.
    """

    __slots__ = ("id", "queue", "_rtype", "created", "_epoch")

    def __init__(
        self,
        queue: Queue,
        id: str,
        rtype: Any = Any,
        created: bool = True,
        epoch: int | None = None,
    ) -> None:
        self.id = id
        self.queue = queue
        self._rtype = rtype
        self.created = created
        # the result subscription's epoch when the job was submitted, if it was live then
        self._epoch = epoch if created else None

    def __repr__(self) -> str:
        return f"Job({self.id!r}, queue={self.queue.name!r})"

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its value; can be awaited again.

        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises JobFailed: the final attempt failed, or the job was dead-lettered.
        :raises JobCancelled: the job was cancelled, or expired before it started.
        :raises JobNotFound: the queue knows no such job (or its result expired).
        :raises ResultTimeout: ``timeout`` passed first; the job goes on.
        :raises RedisUnavailable: Redis can't be reached, or the server does not speak Redis.
        :raises RedisRefused: Redis refused the commands that read outcomes (an ACL rule).
        """
        try:
            async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for
                data = await self.queue._results.wait(self.id, self._epoch)
        except TimeoutError:
            raise ResultTimeout(f"job {self.id} not finished after {timeout} s") from None
        outcome = wire.decode_outcome(data)
        if outcome.cancelled:
            why = f": {outcome.error.message}" if outcome.error is not None else ""
            raise JobCancelled(f"job {self.id} ({outcome.task}) was cancelled{why}")
        if not outcome.ok:
            err = outcome.error or wire.ErrorInfo(type="Error", message="unknown failure")
            raise JobFailed(
                self.id, outcome.task, err.type, err.message, err.traceback, outcome.attempts
            )
        return msgspec.msgpack.decode(  # type: ignore[no-any-return]
            outcome.value, type=self._rtype, dec_hook=wire.dec_hook
        )

    async def status(self) -> JobStatus:
        """Where the job is now."""
        return await self.queue._status(self.id)

    def progress(self) -> AsyncIterator[wire.Progress]:
        """Its progress reports as its task makes them (``async for p in job.progress()``):
        the last one so far first, then each new one, until the job has finished however it
        ended (then :meth:`result` says how). A task reports with
        ``aioqueue.job_context().report_progress(...)``. Nothing is polled.

        :raises JobNotFound: the queue knows no such job.
        """
        return progress.follow(self.queue, self.id)

    async def last_progress(self) -> wire.Progress | None:
        """The last progress report of a job that waits or runs (None if it made none, or has
        finished)."""
        return await progress.last_report(self.queue, self.id)

    async def cancel(self) -> bool:
        """Cancel the job: it never runs if it has not started, and is stopped (a sync job's
        child killed, an async one's task cancelled; no retry) if it runs; True if it is
        cancelled (by this call or an earlier one), False if it finished otherwise or is
        unknown (see :meth:`aioqueue.Queue.cancel`)."""
        return (await self.queue.cancel([self.id]))[0]
