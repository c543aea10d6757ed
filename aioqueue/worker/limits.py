"""Limits on a worker's children: CPU time per job, enforced inside the child; memory, watched
by the supervisor.

**CPU time** (``cpu_limit`` seconds per job): before each job the child arms a CPU-time timer
(``ITIMER_PROF``: user and system time of the whole process, all threads, to the microsecond).
When it fires while the task's own code runs, :class:`~aioqueue.CpuLimitExceeded` is raised
there: the attempt fails with it, and the child takes its next job. Where it fires elsewhere
(aioqueue's code, say writing the reply after the task returned; asyncio's loop; between jobs)
nothing is raised, and it fires again after :data:`RECHECK_S` more seconds of CPU, as it does
while a task that caught the exception goes on. A task stuck in C code that never returns to
Python can't be interrupted this way: its ``timeout`` (wall clock) covers it.

A timer is used rather than ``RLIMIT_CPU`` because the latter counts whole seconds, which
would let a job of a 0.5 s limit run up to 1.5 s; the timer is one system call per job.

**Memory** is a child's resident set size, read from ``/proc/<pid>/statm`` (one small read, a
few microseconds). ``max_memory_per_child`` (soft) is checked after each job: a child over it
runs the jobs already in its pipe, takes no more, and is replaced, as after
``max_tasks_per_child``; nothing is interrupted. ``memory_limit`` (hard) is checked every
:data:`SAMPLE_S` seconds in each child running a job: a child over it is killed, and its job
fails with ``MemoryLimitExceeded`` (retried as its task's ``retries`` say, like a timeout) while
the jobs queued behind it go to other children. A child left over ``memory_limit`` after a job,
with no soft limit set, is replaced as if it were the soft limit, so that the next job is not
killed for memory it did not take.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from .. import wire
from ..errors import CpuLimitExceeded

if TYPE_CHECKING:
    from .handle import Child
    from .pool import Pool

__all__ = ("RECHECK_S", "SAMPLE_S", "CpuLimit", "Limits", "in_task", "parse_args", "rss")

log = logging.getLogger(__name__)

RECHECK_S = 0.05  # CPU seconds between reminders once a job is over its limit
SAMPLE_S = 0.1  # seconds between checks of busy children's memory against memory_limit
MIB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_PACKAGE = os.path.dirname(os.path.dirname(__file__))  # aioqueue's
_OWN_DIRS = (_PACKAGE + os.sep, os.path.dirname(asyncio.__file__) + os.sep)
_OWN_FILES = frozenset(m.__file__ for m in (threading, selectors))
_CODEC = wire.__file__  # where registered types' encoders and decoders are called from


def _own(filename: str) -> bool:
    return filename.startswith(_OWN_DIRS) or filename in _OWN_FILES


def in_task(frame: FrameType) -> bool:
    """Whether ``frame``, the main thread's current one, runs a task's own code: code of
    neither aioqueue, asyncio nor the thread machinery, and not called back by aioqueue's
    encoding (a registered type's encoder, which runs after the task returned)."""
    if _own(frame.f_code.co_filename):
        return False
    caller = frame.f_back
    while caller is not None and not _own(caller.f_code.co_filename):
        caller = caller.f_back
    return caller is None or caller.f_code.co_filename != _CODEC


class CpuLimit:
    """In a child: at most ``seconds`` of CPU time per job (None: no limit).

    Made in the child's main thread, where the handler of ``SIGPROF`` is installed.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        if seconds is not None:
            signal.signal(signal.SIGPROF, self._expired)

    def before_job(self) -> None:
        """Give the job about to start its own ``seconds`` of CPU, from now."""
        if self.seconds is not None:
            signal.setitimer(signal.ITIMER_PROF, self.seconds, RECHECK_S)

    def disarm(self) -> None:
        """No more limit (before the stop hooks run, say)."""
        if self.seconds is not None:
            signal.setitimer(signal.ITIMER_PROF, 0)

    def _expired(self, signum: int, frame: FrameType | None) -> None:
        if frame is not None and in_task(frame):
            raise CpuLimitExceeded(f"used more than {self.seconds:g} s of CPU (cpu_limit)")


def rss(pid: int) -> int | None:
    """The resident set size of process ``pid`` in bytes; None if it is gone, or there is no
    ``/proc`` to read."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    except OSError:
        return None
    try:
        fields = os.read(fd, 256).split()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(fields[1]) * _PAGE if len(fields) > 1 else None


class Limits:
    """The worker's limits on its children: the supervisor's side.

    :param cpu_limit: seconds of CPU a job may use (None: no limit); passed on to each child.
    :param memory_limit: MiB of RSS a child running a job may hold before it is killed.
    :param max_memory_per_child: MiB of RSS after a job past which a child is replaced.
    :param interval: seconds between checks against ``memory_limit``.
    """

    def __init__(
        self,
        *,
        cpu_limit: float | None = None,
        memory_limit: int | None = None,
        max_memory_per_child: int | None = None,
        interval: float = SAMPLE_S,
    ) -> None:
        self.cpu_limit = cpu_limit
        self.memory_limit = memory_limit
        self.max_memory_per_child = max_memory_per_child
        self.interval = interval

    def child_args(self) -> list[str]:
        """The command-line arguments that give a child its limits (see :func:`parse_args`)."""
        return [] if self.cpu_limit is None else ["--cpu-limit", repr(self.cpu_limit)]

    def after_job(self, child: Child) -> None:
        """A job of ``child`` ended: if its RSS is over ``max_memory_per_child`` (else
        ``memory_limit``), it runs the jobs it holds and no more, and is then replaced."""
        if child.budget is not None:
            return
        if self.max_memory_per_child is not None:
            limit, name = self.max_memory_per_child, "max_memory_per_child"
        elif self.memory_limit is not None:
            limit, name = self.memory_limit, "memory_limit"
        else:
            return
        size = rss(child.pid)
        if size is not None and size > limit * MIB:
            child.budget = child.done + len(child.jobs)
            log.info(
                "child %d: RSS %d MiB after a job, over %s %d MiB; replacing it",
                child.pid, size // MIB, name, limit,
            )  # fmt: skip

    async def watch(self, pool: Pool) -> None:
        """Every :attr:`interval` seconds, kill each of ``pool``'s children that holds more than
        ``memory_limit`` while it runs a job: the job fails with ``MemoryLimitExceeded``. Runs
        until cancelled; returns at once without a ``memory_limit``."""
        limit = self.memory_limit
        if limit is None:
            return
        while True:
            await asyncio.sleep(self.interval)
            for child in list(pool.spawner.children):
                if child.dead or not child.jobs or not child.jobs[0].started:
                    continue
                size = rss(child.pid)
                if size is None or size <= limit * MIB:
                    continue
                work = child.jobs[0]
                log.warning(
                    "child %d running %s: RSS %d MiB, over memory_limit %d MiB; killing it",
                    child.pid, work.task, size // MIB, limit,
                )  # fmt: skip
                why = wire.ErrorInfo(
                    type="MemoryLimitExceeded",
                    message=f"child RSS {size // MIB} MiB over the limit {limit} MiB"
                    " (memory_limit); the child was killed",
                    kind="memory",
                )
                child.kill_for(why, pool.kill_grace)


def parse_args(args: Sequence[str]) -> CpuLimit:
    """A child's limits from the arguments :meth:`Limits.child_args` made.

    :raises ValueError: on arguments it did not make.
    """
    seconds: float | None = None
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if flag != "--cpu-limit" or not rest:
            raise ValueError(f"unexpected child arguments: {args!r}")
        seconds = float(rest.pop(0))
    return CpuLimit(seconds)
