"""What a worker keeps about its jobs and calls: held jobs, call channels, the outage log, and
the signal its loops wait on for a change."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from ..errors import AioqueueError
from ..keys import Keys
from ..scripts import LeasedJob, Receipt
from ..wire import Envelope, decode_envelope

if TYPE_CHECKING:
    from .pool import Work

__all__ = ("Change", "Channel", "Held", "Outage", "envelope_of")

log = logging.getLogger("aioqueue.worker")


class Change:
    """Wakes the waiters of the next change, and costs nothing when none waits: the first
    waiter makes an event, the next :meth:`fire` sets it and drops it (the hot path fires once
    or twice per job, and mostly nobody waits)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def fire(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        """Until the next :meth:`fire` (one after this call began)."""
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


class Held:
    """A job this worker holds a lease on, from its claim until its outcome is recorded."""

    __slots__ = ("attempts", "env", "finishing", "id", "job", "lost", "run_s", "token", "work")

    def __init__(self, job: LeasedJob, env: Envelope | None = None) -> None:
        self.job = job
        self.id, self.token, self.attempts = job.id, job.token, job.attempts  # read per step
        self.env = env  # decoded once, at start
        self.work: Work | None = None  # in the pool, until the child's reply
        self.lost = False  # the lease was lost: drop whatever comes of it
        self.finishing = False  # its outcome is queued for the finish script
        self.run_s: float | None = None  # how long its child ran it, once the child replied

    @property
    def task(self) -> str:
        return self.env.task if self.env is not None else "?"


def envelope_of(data: bytes) -> Envelope | None:
    """The job's envelope, or None when its bytes don't decode."""
    try:
        return decode_envelope(data)
    except msgspec.DecodeError:
        return None


class Channel:
    """One kind of call a worker makes (fetch, finish, beat, reap), one call at a time.

    Each call gets a receipt under the channel's key; a call whose reply was lost is re-sent as
    is, with the same receipt, before the channel's next call, and so gets its first answer.
    """

    def __init__(self, keys: Keys, worker: str, name: str, ttl_ms: int) -> None:
        self.key = keys.receipt(f"{worker}:{name}")
        self.ttl_ms = ttl_ms
        self._seq = 1

    def next(self, width: int = 1) -> Receipt:
        """A receipt for the next call; ``width`` numbers are reserved (a claim's tokens)."""
        receipt = Receipt(self.key, str(self._seq), self.ttl_ms)
        self._seq += max(width, 1)
        return receipt


class Outage:
    """Logs a Redis outage once when it starts and once when it ends, not once per failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.since: float | None = None

    def failed(self, what: str, exc: BaseException) -> None:
        """A call failed: log it if it starts an outage (with a traceback when the error is not
        one of Redis's or the network's, which means a bug worth reading)."""
        if self.since is None:
            self.since = time.monotonic()
            expected = isinstance(exc, RedisError | AioqueueError | OSError)
            log.warning(
                "Redis at %s: %s failed (%s: %s); retrying with backoff",
                self.url, what, type(exc).__name__, exc, exc_info=None if expected else exc,
            )  # fmt: skip

    def ok(self) -> None:
        if self.since is not None:
            log.warning(
                "Redis at %s answers again after %.1fs", self.url, time.monotonic() - self.since
            )
            self.since = None
