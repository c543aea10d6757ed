"""A pool of long-lived child processes, one pipe pair each, fed by the supervisor's loop.

Unlike ``concurrent.futures.ProcessPoolExecutor``, a child that dies or times out fails only its
own job: it is killed (TERM, then KILL) and replaced in the background while the others go on.

Each child runs its jobs in order. With ``depth`` > 1 the pool writes several jobs into a
child's pipe at once (one write for all of them) and reads the replies as they come, so short
jobs cost no round trip each. A job's timeout runs from the moment the child starts it (the
previous reply), and when a child dies only the job it was running fails; the jobs queued behind
it never started and go to another child.
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

from .. import wire
from ._frames import HEADER, READY

__all__ = ("Pool", "Work")

log = logging.getLogger(__name__)


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
    """One job handed to the pool; ``on_done`` gets the child's reply, or None if cancelled."""

    __slots__ = ("data", "timeout", "on_done", "finished", "child")

    def __init__(
        self, data: bytes, timeout: float | None, on_done: Callable[[wire.ChildReply | None], None]
    ) -> None:
        self.data = data
        self.timeout = timeout
        self.on_done = on_done
        self.finished = False
        self.child: Child | None = None

    def _finish(self, reply: wire.ChildReply | None) -> None:
        if not self.finished:
            self.finished = True
            self.on_done(reply)


class Child:
    """One child process, its pipes and the jobs written to it, in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.assigned: deque[Work] = deque()
        self.done = 0
        self.head_started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out: float | None = None
        self.retiring = False
        self.dead = False

    async def read(self) -> bytes:
        try:
            head = await self.stdout.readexactly(4)
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

    :param spawn: starts a background task (the supervisor's task group).
    :param depth: jobs written ahead into one child's pipe (1: one at a time).
    """

    def __init__(
        self,
        spec: str,
        processes: int,
        *,
        spawn: Callable[..., object],
        depth: int = 1,
        max_tasks_per_child: int | None = None,
        kill_grace: float = 1.0,
        start_timeout: float = 60.0,
    ) -> None:
        self.spec = spec
        self.processes = processes
        self.depth = max(1, depth)
        self.max_tasks_per_child = max_tasks_per_child
        self.kill_grace = kill_grace
        self.start_timeout = start_timeout
        self._spawn = spawn
        self._waiting: deque[Work] = deque()
        self.children: list[Child] = []
        self._closing = False

    # -- children --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every child and wait until each has imported the tasks."""
        children = await asyncio.gather(*(self._start_child() for _ in range(self.processes)))
        for child in children:
            self._adopt(child)

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
            ready = await asyncio.wait_for(child.read(), self.start_timeout)
        except (_ChildDied, TimeoutError):
            child.signal(signal.SIGKILL)
            await proc.wait()
            raise RuntimeError(
                f"a child process for {self.spec} failed to start "
                f"({_describe_exit(proc.returncode)}); see its error output above"
            ) from None
        if ready != READY:
            child.signal(signal.SIGKILL)
            raise RuntimeError(f"child sent {ready[:20]!r} instead of a ready frame")
        return child

    def _adopt(self, child: Child) -> None:
        self.children.append(child)
        self._spawn(self._reader, child)
        self._dispatch()

    async def _replace(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                child = await self._start_child()
            except RuntimeError:
                log.exception("could not start a child process; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._closing:
                await child.close(self.kill_grace)
                return
            self._adopt(child)
            return

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self, data: bytes, timeout: float | None, on_done: Callable[[wire.ChildReply | None], None]
    ) -> Work:
        """Queue one job (its envelope bytes); ``on_done`` is called once with the reply."""
        work = Work(data, timeout, on_done)
        self._waiting.append(work)
        self._dispatch()
        return work

    def cancel(self, work: Work) -> None:
        """Give up a job: ``on_done(None)`` now; if a child is running it, the child is killed."""
        if work.finished:
            return
        child = work.child
        if child is None:
            with contextlib.suppress(ValueError):
                self._waiting.remove(work)
        elif child.assigned and child.assigned[0] is work and not child.dead:
            child.kill(self.kill_grace)
        work._finish(None)

    def _dispatch(self) -> None:
        if not self._waiting:
            return
        for child in self.children:
            if child.dead or child.retiring:
                continue
            room = self.depth - len(child.assigned)
            if self.max_tasks_per_child:
                room = min(room, self.max_tasks_per_child - child.done - len(child.assigned))
            if room <= 0:
                continue
            frames = []
            was_idle = not child.assigned
            while room > 0 and self._waiting:
                work = self._waiting.popleft()
                if work.finished:
                    continue
                work.child = child
                child.assigned.append(work)
                frames.append(HEADER.pack(len(work.data)))
                frames.append(work.data)
                room -= 1
            if not frames:
                continue
            try:
                child.stdin.write(b"".join(frames))
            except (ConnectionError, RuntimeError):
                child.kill(self.kill_grace)  # the reader finds the death and fails the head
            if was_idle:
                self._head_started(child)
            if not self._waiting:
                return

    def _head_started(self, child: Child) -> None:
        child.head_started = time.monotonic()
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        if child.assigned and child.assigned[0].timeout is not None:
            timeout = child.assigned[0].timeout
            child.timer = asyncio.get_running_loop().call_later(
                timeout, self._timed_out, child, timeout
            )

    def _timed_out(self, child: Child, timeout: float) -> None:
        child.timed_out = timeout
        child.kill(self.kill_grace)

    async def _reader(self, child: Child) -> None:
        """Read a child's replies in order; on its death fail only the job it was running."""
        try:
            while True:
                raw = await child.read()
                work = child.assigned.popleft()
                child.done += 1
                try:
                    reply = wire.decode_child_reply(raw)
                except Exception as exc:
                    reply = wire.ChildReply(
                        ok=False,
                        error=wire.ErrorInfo(type=type(exc).__name__, message=f"bad reply: {exc}"),
                    )
                work._finish(reply)
                if self.max_tasks_per_child and child.done >= self.max_tasks_per_child:
                    child.retiring = True
                if child.assigned:
                    self._head_started(child)
                elif child.timer is not None:
                    child.timer.cancel()
                    child.timer = None
                if child.retiring and not child.assigned:
                    self.children.remove(child)
                    self._spawn(child.close, self.kill_grace)
                    self._spawn(self._replace)
                    self._dispatch()
                    return
                self._dispatch()
        except _ChildDied:
            pass
        child.dead = True
        if child.timer is not None:
            child.timer.cancel()
        code = await child.proc.wait()
        with contextlib.suppress(ValueError):
            self.children.remove(child)
        if child.assigned:
            head = child.assigned.popleft()
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
            head._finish(wire.ChildReply(ok=False, error=error))
            for work in reversed(child.assigned):  # never started: another child runs them
                work.child = None
                if not work.finished:
                    self._waiting.appendleft(work)
            child.assigned.clear()
        if not self._closing:
            self._spawn(self._replace)
        self._dispatch()

    async def close(self, *, kill: bool = False) -> None:
        """Stop every child: end of input (they finish what they hold), or kill them."""
        self._closing = True
        children = list(self.children)
        if kill:
            for c in children:
                c.kill(self.kill_grace)
        await asyncio.gather(*(c.close(self.kill_grace) for c in children), return_exceptions=True)
