"""A pool of long-lived child processes, one pipe pair each, fed by the supervisor's loop.

Unlike ``concurrent.futures.ProcessPoolExecutor``, a child that dies or times out fails only its
own job: it is killed (TERM, then KILL) and replaced in the background while the others go on.

A child's pipe holds at most the job it is running. Jobs submitted while every child is busy wait
in the pool, where :meth:`Pool.cancel` takes them back without touching a child; a job is written
into a child only when that child is idle, so its timeout runs from the moment the child starts
it. :attr:`Pool.capacity` says how many children can take jobs now, so that the supervisor claims
no more than they can run; when children can't be started ``max_start_failures`` times in a row
(say a deploy broke the task module), the pool declares itself :attr:`~Pool.broken` and hands
back every job that is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from .. import wire
from ._frames import HEADER, READY, START_FAILED, frame

__all__ = ("Pool", "PoolStartError", "Work")

log = logging.getLogger(__name__)

_TRACEBACK_LINES = 20  # the end of a child's start-up traceback kept in errors
_FIRST_RETRY_DELAY = 0.1  # seconds before a failed start is tried again; doubles up to:
_MAX_RETRY_DELAY = 10.0


class PoolStartError(RuntimeError):
    """Raised when a child process can't start; the message holds the child's error."""


class _ChildDied(Exception):
    pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Work:
    """One job handed to the pool; ``on_done`` is called once, with the reply or None.

    :ivar tag: the submitter's own reference, for :class:`Pool`'s ``on_start``.
    :ivar started_at: ``time.monotonic()`` when a child was given the job (0 before).
    """

    __slots__ = ("task", "data", "timeout", "on_done", "finished", "child", "tag", "started_at")

    def __init__(
        self,
        task: str,
        data: bytearray | None,
        timeout: float | None,
        on_done: Callable[[wire.ChildReply | None], None],
        tag: Any = None,
    ) -> None:
        self.task = task
        self.data = data  # the framed ChildJob, until it is written into a child
        self.timeout = timeout
        self.on_done = on_done
        self.finished = False
        self.child: Child | None = None
        self.tag = tag
        self.started_at = 0.0

    @property
    def started(self) -> bool:
        """True once written into a child: cancelling it then kills that child."""
        return self.child is not None

    def _finish(self, reply: wire.ChildReply | None) -> None:
        if not self.finished:
            self.finished = True
            self.on_done(reply)


class Child:
    """One child process, its pipes and the job it is running."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.work: Work | None = None
        self.done = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out: float | None = None
        self.in_service = False  # counted in the pool's capacity
        self.dead = False  # being killed: its reply, if one still comes, is ignored
        self.replaced = False  # a replacement has been started for it
        self.exited = asyncio.Event()

    async def read(self) -> bytes:
        try:
            head = await self.stdout.readexactly(HEADER.size)
            (size,) = HEADER.unpack(head)
            return await self.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _ChildDied from exc

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self, grace: float) -> None:
        """TERM now, KILL after ``grace`` seconds if it is still there."""
        self.dead = True
        self.signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self.signal, signal.SIGKILL)

    async def close(self, grace: float) -> None:
        """End of input: the child exits by itself; kill it if it does not within ``grace``."""
        with contextlib.suppress(Exception):
            self.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.proc.wait()


class Pool:
    """``processes`` children running tasks of the queue at ``spec`` (``module:attr``).

    :param spawn: starts a background task: ``spawn(async_fn, *args)`` (a task group's
        ``start_soon``); the pool runs one reader per child and its replacements there.
    :param on_change: called (no arguments) after :attr:`capacity` changes and after each job
        finishes, so the caller can claim more work; it must not block.
    :param on_broken: called once with :attr:`broken`'s message when the pool gives up.
    :param on_start: called with each :class:`Work` when a child is given it; must not block.
    :param max_tasks_per_child: jobs a child runs before it is replaced (None: no limit).
    :param kill_grace: seconds between TERM and KILL for a child being killed.
    :param start_timeout: seconds a child may take to import the tasks.
    :param max_start_failures: children in a row that may fail to start before the pool is
        declared broken.
    """

    def __init__(
        self,
        spec: str,
        processes: int,
        *,
        spawn: Callable[..., object],
        on_change: Callable[[], None] | None = None,
        on_broken: Callable[[str], None] | None = None,
        on_start: Callable[[Work], None] | None = None,
        max_tasks_per_child: int | None = None,
        kill_grace: float = 1.0,
        start_timeout: float = 60.0,
        max_start_failures: int = 3,
    ) -> None:
        self.spec = spec
        self.processes = processes
        self.max_tasks_per_child = max_tasks_per_child
        self.kill_grace = kill_grace
        self.start_timeout = start_timeout
        self.max_start_failures = max(1, max_start_failures)
        self.broken: str | None = None
        self.restarts = 0  # children started to replace one that exited, was killed or retired
        self._spawn = spawn
        self._on_change = on_change
        self._on_broken = on_broken
        self._on_start = on_start
        self._waiting: deque[Work] = deque()  # submitted, no child yet
        self._live: list[Child] = []  # ready children that take jobs: the capacity
        self._idle: list[Child] = []  # live children without a job
        self._children: set[Child] = set()  # every child process not yet reaped
        self._start_failures = 0  # in a row
        self._closing = False

    # -- state -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Children that can take jobs now: started, ready, not dying or retiring (0 if broken)."""
        if self.broken is not None or self._closing:
            return 0
        return len(self._live)

    @property
    def idle(self) -> int:
        """Live children with no job."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Jobs submitted that no child has started yet."""
        return len(self._waiting)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- children --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every child and wait until each has imported the tasks.

        :raises PoolStartError: if any child could not, with its error (the pool is then
            :attr:`broken`, and the children that did start are stopped).
        """
        results = await asyncio.gather(
            *(self._start_child() for _ in range(self.processes)), return_exceptions=True
        )
        children = [r for r in results if isinstance(r, Child)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(c.close(self.kill_grace) for c in children))
            if isinstance(failure, PoolStartError):
                self.broken = str(failure)
            raise failure
        for child in children:
            self._adopt(child)
        self._changed()

    async def _start_child(self) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aioqueue.worker._child",
            self.spec,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        child = Child(proc)
        try:
            first = await asyncio.wait_for(child.read(), self.start_timeout)
        except (_ChildDied, TimeoutError) as exc:
            child.signal(signal.SIGKILL)
            code = await proc.wait()
            if isinstance(exc, TimeoutError):
                what = f"not ready within {self.start_timeout:g} s"
            else:
                what = _describe_exit(code)
            raise PoolStartError(
                f"a child process for {self.spec} failed to start ({what}); see its error output"
            ) from None
        except BaseException:
            child.signal(signal.SIGKILL)
            raise
        if first == READY:
            return child
        child.signal(signal.SIGKILL)
        await proc.wait()
        if first.startswith(START_FAILED):
            report = first[len(START_FAILED) :].decode(errors="replace").rstrip()
            tail = "\n".join(report.splitlines()[-_TRACEBACK_LINES:])
            raise PoolStartError(f"a child process could not import {self.spec}:\n{tail}")
        raise PoolStartError(f"a child process sent {first[:20]!r} instead of a ready frame")

    def _adopt(self, child: Child) -> None:
        self._children.add(child)
        self._live.append(child)
        child.in_service = True
        self._spawn(self._reader, child)
        self._next(child)

    def _drop(self, child: Child) -> None:
        """Take a child out of service: it takes no more jobs (capacity goes down)."""
        if child.in_service:
            child.in_service = False
            self._live.remove(child)
            if child in self._idle:
                self._idle.remove(child)

    def _kill(self, child: Child) -> None:
        self._drop(child)
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        child.kill(self.kill_grace)

    def _replace_later(self, child: Child) -> None:
        if not child.replaced:
            child.replaced = True
            if not self._closing and self.broken is None:
                self._spawn(self._replace)

    async def _replace(self) -> None:
        delay = _FIRST_RETRY_DELAY
        while not self._closing and self.broken is None:
            try:
                child = await self._start_child()
            except PoolStartError as exc:
                self._start_failures += 1
                if self._start_failures >= self.max_start_failures:
                    n = self._start_failures
                    self._break(f"{n} child processes in a row failed to start; {exc}")
                    return
                log.error("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            self._start_failures = 0
            if self._closing or self.broken is not None:
                await child.close(self.kill_grace)
                return
            self.restarts += 1
            self._adopt(child)
            self._changed()
            return

    def _break(self, message: str) -> None:
        """Give up: no more children, and every waiting job goes back with None."""
        if self.broken is not None:
            return
        self.broken = message
        log.error("worker pool broken: %s", message)
        waiting = list(self._waiting)
        self._waiting.clear()
        for work in waiting:
            work._finish(None)
        if self._on_broken is not None:
            self._on_broken(message)
        self._changed()

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        task: str,
        args: msgspec.Raw,
        kwargs: msgspec.Raw,
        timeout: float | None,
        on_done: Callable[[wire.ChildReply | None], None],
        tag: Any = None,
    ) -> Work:
        """Run ``task`` with its raw msgpack arguments (an array, a map) in an idle child, or
        queue it in the pool until one is idle.

        ``on_done`` is called once: with the child's reply (``kind`` "timeout" or "crashed"
        when its child was killed or died), or with None when the job never ran to an end
        here (cancelled, or handed back by a broken or closing pool). ``tag`` is kept on the
        :class:`Work` for ``on_start``.
        """
        work = Work(task, frame(wire.ChildJob(task, args, kwargs)), timeout, on_done, tag)
        if self.broken is not None or self._closing:
            asyncio.get_running_loop().call_soon(work._finish, None)
        elif self._idle and not self._waiting:
            self._run(self._idle.pop(), work)
        else:
            self._waiting.append(work)
        return work

    def cancel(self, work: Work) -> None:
        """Give up a job: ``on_done(None)`` now. A waiting job is only taken out of the queue;
        a started one's child is killed (and replaced)."""
        if work.finished:
            return
        child = work.child
        if child is None:
            with contextlib.suppress(ValueError):
                self._waiting.remove(work)
        elif child.work is work and not child.dead:
            self._kill(child)
        work._finish(None)
        self._changed()

    def _run(self, child: Child, work: Work) -> None:
        work.child = child
        child.work = work
        assert work.data is not None
        try:
            child.stdin.write(work.data)
        except (ConnectionError, RuntimeError):
            self._kill(child)  # the reader finds its end and fails the job
            return
        work.data = None
        work.started_at = time.monotonic()
        if self._on_start is not None:
            self._on_start(work)
        if work.timeout is not None:
            child.timer = asyncio.get_running_loop().call_later(
                work.timeout, self._timed_out, child, work
            )

    def _next(self, child: Child) -> None:
        """An idle child in service: give it the next waiting job, if any."""
        if self._waiting:
            self._run(child, self._waiting.popleft())
        else:
            self._idle.append(child)

    def _timed_out(self, child: Child, work: Work) -> None:
        if child.work is work and not child.dead:
            child.timed_out = work.timeout
            self._kill(child)
            self._changed()

    async def _reader(self, child: Child) -> None:
        """Read a child's replies; on its death fail the job it was running."""
        try:
            while True:
                raw = await child.read()
                work = child.work
                if child.dead:
                    continue  # killed: whatever it still says is dropped; wait for its end
                if work is None:
                    log.error("child %d replied with no job; killing it", child.proc.pid)
                    self._kill(child)
                    continue
                child.work = None
                if child.timer is not None:
                    child.timer.cancel()
                    child.timer = None
                child.done += 1
                try:
                    reply = wire.decode_child_reply(raw)
                except Exception as exc:
                    reply = wire.ChildReply(
                        ok=False,
                        error=wire.ErrorInfo(type=type(exc).__name__, message=f"bad reply: {exc}"),
                    )
                if self.max_tasks_per_child and child.done >= self.max_tasks_per_child:
                    self._drop(child)
                    self._spawn(child.close, self.kill_grace)
                    self._replace_later(child)
                elif child.in_service:
                    self._next(child)
                work._finish(reply)
                self._changed()
        except _ChildDied:
            pass
        await self._exited(child)

    async def _exited(self, child: Child) -> None:
        child.dead = True
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        code = await child.proc.wait()
        self._drop(child)
        self._children.discard(child)
        work, child.work = child.work, None
        if work is not None and not work.finished:
            if child.timed_out is not None:
                error = wire.ErrorInfo(
                    type="TimeoutError",
                    message=f"attempt exceeded its timeout of {child.timed_out:g} s; "
                    "its child was killed",
                    kind="timeout",
                )
            else:
                error = wire.ErrorInfo(
                    type="ChildDied",
                    message=f"the child process running the job died ({_describe_exit(code)})",
                    kind="crashed",
                )
            work._finish(wire.ChildReply(ok=False, error=error))
        self._replace_later(child)
        child.exited.set()
        self._changed()

    async def close(self, *, kill: bool = False) -> None:
        """Stop every child; waiting jobs get ``on_done(None)``.

        :param kill: kill the children now (their jobs get ``on_done(None)``); else close their
            input, so that each finishes its job (the reply is delivered) and exits.
        """
        self._closing = True
        waiting = list(self._waiting)
        self._waiting.clear()
        for work in waiting:
            work._finish(None)
        children = list(self._children)
        for child in children:
            self._drop(child)
            if kill:
                if not child.dead:
                    child.kill(self.kill_grace)
                if child.work is not None:
                    child.work._finish(None)
        await asyncio.gather(*(c.close(self.kill_grace) for c in children), return_exceptions=True)
        deadline = asyncio.get_running_loop().time() + 1.0
        for child in children:  # let each reader deliver its child's last reply
            left = deadline - asyncio.get_running_loop().time()
            if child.exited.is_set() or left <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.exited.wait(), left)
        self._changed()
