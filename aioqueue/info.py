"""What ``Queue.info()`` and ``Queue.dead_letters()`` return: counts and dead-lettered jobs."""

from __future__ import annotations

import msgspec

from . import wire

__all__ = ("DeadLetter", "QueueInfo")


class QueueInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of a queue's jobs, its workers and its lifetime counters.

    :ivar workers: live workers: those whose last heartbeat has not lapsed.
    :ivar live_workers: their ids.
    :ivar gone_workers: ids of workers whose heartbeat lapsed (killed, cut off, or stopped
        without saying goodbye), until a live worker clears them a minute later.
    :ivar paused: True while the queue is paused (:meth:`Queue.pause`): workers claim nothing.
    :ivar last_minute: attempts ``completed`` and ``failed`` (retried or dead-lettered) in the
        last whole minute, by Redis's clock.
    :ivar waiting: jobs waiting for the jobs they run after (``options(after=...)``).
    """

    pending: int
    scheduled: int
    running: int
    dead: int
    workers: int
    counters: dict[str, int]
    live_workers: list[str] = []
    gone_workers: list[str] = []
    paused: bool = False
    last_minute: dict[str, int] = {}
    waiting: int = 0


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A dead-lettered job: its task and every attempt's error."""

    id: str
    task: str
    dead_at: float
    errors: list[wire.ErrorInfo]
