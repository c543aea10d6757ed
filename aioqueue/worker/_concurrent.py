"""Inside a child: ``async def`` jobs run concurrently on its event loop.

The supervisor marks a job ``concurrent`` when its task is ``async def`` and the worker's
``async_concurrency`` is above 1 (the child gets that number on its command line). When such a
job is next in the child's inbox, the main thread runs the child's event loop with
:class:`Concurrent`, which takes the concurrent jobs that follow as they arrive, up to
``async_concurrency`` at once, each an asyncio task in a context of its own, so that
:func:`aioqueue.job_context` and its reports belong to the job. It hands the thread back once
nothing runs and the next job, if any, is not concurrent: a sync job never runs beside async ones.

A job's ``Done`` is written before another job takes its slot, so what the pipe holds still tells
which jobs the child may have been running. A :class:`~._frames.Cancel` of a job still in the
inbox is answered there (it never runs); of a running one, it cancels its task, and the
``CancelledError`` that ends the task is answered as the stop asked: a timeout, or given up.

With a ``cpu_limit``, a job's CPU time is counted over its own task's steps: the CPU timer is
armed with what is left of the job's allowance before each step and disarmed after it.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from .. import wire
from ._frames import Done, Run, timeout_error
from .limits import RECHECK_S

if TYPE_CHECKING:
    from ._child import Inbox, Runner
    from .limits import CpuLimit

__all__ = ("ARG", "Concurrent", "child_args", "split_args", "stopped_reply")

ARG = "--async-concurrency"


def child_args(n: int) -> list[str]:
    """The command-line arguments that give a child its ``async_concurrency``."""
    return [ARG, str(n)] if n > 1 else []


def split_args(args: Sequence[str]) -> tuple[list[str], int]:
    """A child's arguments without its ``async_concurrency``, and that (1 if not given)."""
    rest = list(args)
    if ARG not in rest:
        return rest, 1
    at = rest.index(ARG)
    n = int(rest[at + 1])
    del rest[at : at + 2]
    return rest, n


def stopped_reply(timeout: float | None) -> wire.ChildReply:
    """The reply of a job stopped by a :class:`~._frames.Cancel` of this ``timeout``."""
    if timeout is not None:
        return wire.ChildReply(ok=False, error=timeout_error(timeout, "its task was cancelled"))
    error = wire.ErrorInfo(type="CancelledError", message="the job was cancelled by its worker")
    return wire.ChildReply(ok=False, error=error)


class Concurrent:
    """Runs a child's concurrent jobs, ``limit`` at once at most, on ``runner``'s event loop;
    ``cpu`` is the child's CPU limit."""

    def __init__(self, runner: Runner, inbox: Inbox, limit: int, cpu: CpuLimit) -> None:
        self.runner = runner
        self.inbox = inbox
        self.limit = limit
        self.cpu = cpu
        self.tasks: dict[int, asyncio.Task[wire.ChildReply]] = {}
        self.stops: dict[int, float | None] = {}  # running jobs asked to stop: their timeout
        self._woke = asyncio.Event()

    def serve(self, first: Run) -> None:
        """Run ``first`` and the concurrent jobs that follow it, until none runs and the next
        job is not concurrent (or there is none)."""
        self.cpu.disarm()  # the last sync job's timer must not go off in these jobs
        self.runner.loop().run(self._serve(first))

    async def _serve(self, first: Run) -> None:
        loop = asyncio.get_running_loop()
        woke = self._woke = asyncio.Event()
        self.inbox.set_wake(functools.partial(loop.call_soon_threadsafe, woke.set))
        try:
            self._start(first)
            while True:
                woke.clear()
                while len(self.tasks) < self.limit and (run := self.inbox.take_concurrent()):
                    self._start(run)
                for seq, timeout in self.inbox.take_cancels().items():
                    task = self.tasks.get(seq)
                    if task is not None and seq not in self.stops:  # else it is answered
                        self.stops[seq] = timeout
                        task.cancel()
                if not self.tasks and not self.inbox.next_concurrent():
                    return
                await woke.wait()
        finally:
            self.inbox.set_wake(None)

    def _start(self, run: Run) -> None:
        started = time.monotonic()
        stopped = functools.partial(self._stopped, run.seq)
        coro = self.runner.run_async(run.seq, run.job, stopped, self._metered)
        task = asyncio.get_running_loop().create_task(coro)  # in a copy of the context
        task.add_done_callback(functools.partial(self._ended, run.seq, started))
        self.tasks[run.seq] = task

    def _stopped(self, seq: int) -> wire.ChildReply | None:
        """The reply for a ``CancelledError`` that ended job ``seq``: its stop's, if asked."""
        return stopped_reply(self.stops[seq]) if seq in self.stops else None

    def _ended(self, seq: int, started: float, task: asyncio.Task[wire.ChildReply]) -> None:
        if task.cancelled():  # before its first step: its coroutine never ran
            reply = self._stopped(seq) or stopped_reply(None)
        else:
            reply = task.result()
        del self.tasks[seq]
        self.stops.pop(seq, None)
        self.inbox.replies.send(Done(seq, started, time.monotonic(), reply))
        self._woke.set()

    def _metered(self, aw: Awaitable[Any]) -> Awaitable[Any]:
        """``aw``, its steps charged to the job's CPU allowance (as is, without a limit)."""
        if self.cpu.seconds is None:
            return aw
        return _Metered(aw.__await__(), self.cpu.seconds)


class _Metered:
    """Drives an awaitable with the child's CPU timer armed, around each of its steps, with
    what is left of the job's CPU allowance: past it, the task gets ``CpuLimitExceeded``."""

    def __init__(self, it: Generator[Any, Any, Any], seconds: float) -> None:
        self._it = it
        self._left = seconds

    def __await__(self) -> _Metered:
        return self

    def __iter__(self) -> _Metered:
        return self

    def __next__(self) -> Any:
        return self._step(self._it.send, None)

    def send(self, value: Any) -> Any:
        return self._step(self._it.send, value)

    def throw(self, *exc: Any) -> Any:
        return self._step(self._it.throw, *exc)

    def close(self) -> None:
        self._it.close()

    def _step(self, step: Callable[..., Any], *args: Any) -> Any:
        signal.setitimer(signal.ITIMER_PROF, max(self._left, 1e-6), RECHECK_S)
        cpu = time.process_time()
        try:
            return step(*args)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            self._left -= time.process_time() - cpu
