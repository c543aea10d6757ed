"""aioqueue: an asyncio-native job queue on Redis for CPU-bound work that must never be lost."""

from __future__ import annotations

from .context import JobContext as JobContext
from .context import Retry as Retry
from .context import Snooze as Snooze
from .context import job_context as job_context
from .errors import AioqueueError as AioqueueError
from .errors import ArgumentError as ArgumentError
from .errors import BlockingCallInLoop as BlockingCallInLoop
from .errors import CpuLimitExceeded as CpuLimitExceeded
from .errors import InvalidOptions as InvalidOptions
from .errors import JobCancelled as JobCancelled
from .errors import JobFailed as JobFailed
from .errors import JobNotFound as JobNotFound
from .errors import PayloadTooLarge as PayloadTooLarge
from .errors import QueueFull as QueueFull
from .errors import RedisOutOfMemory as RedisOutOfMemory
from .errors import RedisRefused as RedisRefused
from .errors import RedisUnavailable as RedisUnavailable
from .errors import ResultTimeout as ResultTimeout
from .errors import SerializationError as SerializationError
from .errors import UnknownTask as UnknownTask
from .info import DeadLetter as DeadLetter
from .info import QueueInfo as QueueInfo
from .job import Job as Job
from .job import JobStatus as JobStatus
from .options import Call as Call
from .options import Options as Options
from .options import Submitter as Submitter
from .queue import Queue as Queue
from .sync import SyncJob as SyncJob
from .sync import SyncQueue as SyncQueue
from .sync import SyncSubmitter as SyncSubmitter
from .wire import Progress as Progress
from .wire import register_type as register_type

__all__ = (
    "AioqueueError",
    "ArgumentError",
    "BlockingCallInLoop",
    "Call",
    "CpuLimitExceeded",
    "DeadLetter",
    "InvalidOptions",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "Options",
    "PayloadTooLarge",
    "Progress",
    "Queue",
    "QueueFull",
    "QueueInfo",
    "RedisOutOfMemory",
    "RedisRefused",
    "RedisUnavailable",
    "ResultTimeout",
    "Retry",
    "SerializationError",
    "Snooze",
    "Submitter",
    "SyncJob",
    "SyncQueue",
    "SyncSubmitter",
    "UnknownTask",
    "job_context",
    "register_type",
)
