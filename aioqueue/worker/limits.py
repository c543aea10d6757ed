"""Limits on a worker's children: CPU time per job, enforced inside the child.

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
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from .. import wire
from ..errors import CpuLimitExceeded

__all__ = ("RECHECK_S", "CpuLimit", "Limits", "in_task", "parse_args")

RECHECK_S = 0.05  # CPU seconds between reminders once a job is over its limit

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


class Limits:
    """The worker's limits on its children: the supervisor's side.

    :param cpu_limit: seconds of CPU a job may use (None: no limit); passed on to each child.
    """

    def __init__(self, *, cpu_limit: float | None = None) -> None:
        self.cpu_limit = cpu_limit

    def child_args(self) -> list[str]:
        """The command-line arguments that give a child its limits (see :func:`parse_args`)."""
        return [] if self.cpu_limit is None else ["--cpu-limit", repr(self.cpu_limit)]


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
