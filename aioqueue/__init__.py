"""aioqueue: an asyncio-native job queue on Redis for CPU-bound work that must never be lost."""

from __future__ import annotations

from .errors import AioqueueError as AioqueueError
from .errors import ArgumentError as ArgumentError
from .errors import InvalidOptions as InvalidOptions
from .errors import JobCancelled as JobCancelled
from .errors import JobFailed as JobFailed
from .errors import JobNotFound as JobNotFound
from .errors import PayloadTooLarge as PayloadTooLarge
from .errors import RedisOutOfMemory as RedisOutOfMemory
from .errors import RedisUnavailable as RedisUnavailable
from .errors import ResultTimeout as ResultTimeout
from .errors import SerializationError as SerializationError
from .errors import UnknownTask as UnknownTask
from .queue import Call as Call
from .queue import DeadLetter as DeadLetter
from .queue import Job as Job
from .queue import JobStatus as JobStatus
from .queue import Options as Options
from .queue import Queue as Queue
from .queue import QueueInfo as QueueInfo

__all__ = (
    "AioqueueError",
    "ArgumentError",
    "Call",
    "DeadLetter",
    "InvalidOptions",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "Options",
    "PayloadTooLarge",
    "Queue",
    "QueueInfo",
    "RedisOutOfMemory",
    "RedisUnavailable",
    "ResultTimeout",
    "SerializationError",
    "UnknownTask",
)
