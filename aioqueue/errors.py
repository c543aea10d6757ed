"""Every exception aioqueue raises: one root, ``AioqueueError``."""

from __future__ import annotations

from typing import Any

from ._text import count

__all__ = (
    "AioqueueError",
    "ArgumentError",
    "BlockingCallInLoop",
    "CpuLimitExceeded",
    "InvalidOptions",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "PayloadTooLarge",
    "QueueFull",
    "RedisOutOfMemory",
    "RedisRefused",
    "RedisUnavailable",
    "ResultTimeout",
    "SerializationError",
    "UnknownTask",
)


class AioqueueError(Exception):
    """Raised when aioqueue itself reports an error; the root of all its exceptions."""


class JobFailed(AioqueueError):
    """Raised when awaiting the result of a job whose final attempt failed (or was dead-lettered).

    :ivar job_id: the job's id.
    :ivar task: the task name.
    :ivar type: the remote exception's type name (``"TimeoutError"``, ``"ChildDied"``, ...).
    :ivar error: the remote exception's message.
    :ivar traceback: the remote traceback text ("" when there was none).
    :ivar attempts: attempts started.
    """

    def __init__(
        self,
        job_id: str,
        task: str,
        type: str,
        error: str,
        traceback: str = "",
        attempts: int = 0,
    ) -> None:
        self.job_id = job_id
        self.task = task
        self.type = type
        self.error = error
        self.traceback = traceback
        self.attempts = attempts
        tries = f" after {count(attempts, 'attempt')}" if attempts > 0 else ""
        super().__init__(f"job {job_id} ({task}) failed{tries}: {type}: {error}")


class JobCancelled(AioqueueError):
    """Raised when awaiting the result of a job that was cancelled before it started."""


class JobNotFound(AioqueueError, LookupError):
    """Raised when a job id is unknown to the queue (never submitted, or its result expired)."""


class ResultTimeout(AioqueueError, TimeoutError):
    """Raised when ``job.result(timeout=...)`` runs out of time; the job itself goes on."""


class UnknownTask(AioqueueError, LookupError):
    """Raised when a task is submitted as a callable that was never registered with the queue."""


class ArgumentError(AioqueueError, TypeError):
    """Raised when submitted arguments don't fit the task's signature or annotations."""


class SerializationError(AioqueueError, TypeError):
    """Raised when an argument or a result can't be encoded as msgpack."""


class PayloadTooLarge(AioqueueError, ValueError):
    """Raised when an encoded job is over the queue's ``max_payload`` limit."""


class InvalidOptions(AioqueueError, ValueError):
    """Raised when submit options or queue settings are out of range."""


class RedisUnavailable(AioqueueError, ConnectionError):
    """Raised when Redis can't be reached (or is loading) after a bounded wait, when the server
    at the URL does not speak the Redis protocol, or when it refuses the URL's credentials."""


class RedisRefused(AioqueueError):
    """Raised when Redis refuses a command aioqueue sends, for example an ACL user without a
    permission it needs (``NOPERM``); the message gives the URL and Redis's reply."""


class RedisOutOfMemory(AioqueueError):
    """Raised when Redis refuses a write because it reached ``maxmemory`` (nothing was written)."""


class QueueFull(AioqueueError):
    """Raised when a submit with ``block=False`` finds the queue holding ``max_pending``
    waiting jobs; ``jobs`` are the handles of the jobs of that call that were submitted."""

    def __init__(self, message: str, jobs: list[Any] | None = None) -> None:
        super().__init__(message)
        self.jobs = jobs or []


class BlockingCallInLoop(AioqueueError, RuntimeError):
    """Raised when a blocking ``queue.sync`` call is made in a thread that runs an event loop:
    async code awaits the async API instead (``await queue.submit(...)``)."""


class CpuLimitExceeded(AioqueueError):
    """Raised when a job has used more CPU time than the worker's ``cpu_limit``: inside its
    task, in the worker's child. The attempt fails with it (retried as the task's ``retries``
    say), and the child goes on with its next job."""
