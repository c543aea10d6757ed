"""What one server serves: its settings, its Redis session, the queues it knows, its errors."""

from __future__ import annotations

from dataclasses import dataclass

from ..admin.session import CommandError, Session
from ..errors import AioqueueError
from ..keys import validate_queue_name
from ..queue import Queue
from ..task import TaskDef
from ..views import JobRow

__all__ = ("Context", "HttpError", "Settings")

DEFAULT_DISPATCH_TASK = "demo.burn"  # examples/demo_tasks.py's burn
MAX_BODY = 1 << 20


class HttpError(AioqueueError):
    """Raised when a request can't be served; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    """How a server runs.

    :ivar queues: the queues served; empty: every queue in the registry.
    :ivar tasks: the registered tasks submits are checked against; None: any name is taken.
    :ivar token: the bearer token every API call must carry; None: no authentication.
    :ivar read_only: refuse every write with 403.
    :ivar dispatch_task: the task ``POST /dispatch`` submits, by name.
    :ivar dispatch_queue: its default queue (else the first one served, else ``demo``).
    :ivar max_body: largest request body in bytes (413 beyond).
    """

    redis_url: str | None = None
    queues: tuple[str, ...] = ()
    tasks: dict[str, TaskDef] | None = None
    token: str | None = None
    read_only: bool = False
    dispatch_task: str = DEFAULT_DISPATCH_TASK
    dispatch_queue: str | None = None
    max_body: int = MAX_BODY


class Context:
    """The server's session with Redis and the queues it serves, shared by every request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session = Session(settings.redis_url)

    async def names(self) -> list[str]:
        """The queues served: those configured, else every registered one."""
        if self.settings.queues:
            return list(self.settings.queues)
        return await self.session.registered()

    def queue(self, name: str) -> Queue:
        """The session's queue of that name, with the configured tasks registered on it."""
        q = self.session.queue(name)
        if self.settings.tasks is not None and not q.tasks:
            q.tasks.update(self.settings.tasks)
        return q

    async def known(self, name: str) -> Queue:
        """A queue this server serves.

        :raises HttpError: 404 for a queue it doesn't serve (or an invalid name).
        """
        try:
            validate_queue_name(name)
        except ValueError as exc:
            raise HttpError(404, f"unknown queue: {exc}") from None
        names = await self.names()
        if name not in names:
            served = ", ".join(names) or "none registered yet"
            raise HttpError(404, f"unknown queue {name!r} (served: {served})")
        return self.queue(name)

    async def find(self, job_id: str, queue: str | None) -> tuple[Queue, JobRow]:
        """The served queue that knows the job, and its row (see ``Session.find``).

        :raises HttpError: 404 when no served queue knows it.
        """
        names = [(await self.known(queue)).name] if queue else await self.names()
        for name in names:
            self.queue(name)
            try:
                return await self.session.find(job_id, name)
            except CommandError:
                continue
        where = f"queue {queue!r}" if queue else f"the queues served ({', '.join(names)})"
        raise HttpError(404, f"job {job_id!r} not found in {where}")

    async def aclose(self) -> None:
        """Close every connection made."""
        await self.session.aclose()
