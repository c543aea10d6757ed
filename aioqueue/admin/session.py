"""One run of the command: the Redis URL, a client, the queues it touches, the registry."""

from __future__ import annotations

import os
from collections.abc import Sequence

from redis.asyncio import Redis

from .. import connect
from .._redis import call_redis, to_str
from ..errors import AioqueueError, RedisRefused
from ..keys import REGISTRY
from ..queue import DEFAULT_URL, Queue
from ..urls import check_url, safe_url
from ..views import JobRow

__all__ = ("CommandError", "Session")


class CommandError(AioqueueError):
    """Raised when a command can't do what it was asked; its message is the one line shown."""


class Session:
    """The Redis a command talks to and the :class:`Queue` objects it made, closed together."""

    def __init__(self, redis_url: str | None) -> None:
        self.url = check_url(redis_url or os.environ.get("AIOQUEUE_REDIS_URL") or DEFAULT_URL)
        self._queues: dict[str, Queue] = {}
        self._redis: Redis | None = None

    @property
    def redis(self) -> Redis:
        """A client of its own, for commands outside any queue (the registry, doctor)."""
        if self._redis is None:
            self._redis = connect.client(
                self.url, max_connections=10, connect_timeout=2.0, socket_timeout=10.0, retries=1
            )
        return self._redis

    def queue(self, name: str) -> Queue:
        """The queue of that name (one per session); a lost connection is retried once."""
        if name not in self._queues:
            self._queues[name] = Queue(name, self.url, redis_retries=1, connect_timeout=2.0)
        return self._queues[name]

    async def registered(self) -> list[str]:
        """The names in the registry of queues, sorted.

        :raises CommandError: the Redis user may not read the registry (a user confined to one
            queue's keys): then name the queues.
        """
        try:
            names = await call_redis(self.redis.smembers(REGISTRY), self.url)
        except RedisRefused as exc:
            raise CommandError(
                f"this Redis user can't read the registry of queues ({REGISTRY}): name the "
                f"queue(s) to use ({exc})"
            ) from None
        return sorted(to_str(n) for n in names)

    async def register(self, q: Queue) -> None:
        """Add the queue to the registry, as its producers do: best effort (a user confined to
        one queue's keys may not write it)."""
        try:
            await q.register()
        except RedisRefused:
            pass

    async def names(self, given: Sequence[str] | None) -> list[str]:
        """The queues named, else every registered one.

        :raises CommandError: when none is named and none is registered.
        """
        if given:
            return list(given)
        names = await self.registered()
        if not names:
            raise CommandError(
                f"no queues registered at {self.safe_url}: name one (--queue Q, or as an argument)"
            )
        return names

    async def find(self, job_id: str, queue: str | None) -> tuple[Queue, JobRow]:
        """The queue that knows the job (``queue``, else each registered one) and its row.

        :raises CommandError: when no queue knows it.
        """
        names = [queue] if queue else await self.names(None)
        for name in names:
            q = self.queue(name)
            row = await q.scripts.job_info(job_id)
            if row.state != "unknown":
                return q, row
        where = f"queue {queue!r}" if queue else f"the registered queues ({', '.join(names)})"
        raise CommandError(f"job {job_id!r} not found in {where}")

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden."""
        return safe_url(self.url)

    async def aclose(self) -> None:
        """Close every connection made."""
        for q in self._queues.values():
            await q.aclose()
        if self._redis is not None:
            await self._redis.aclose()
