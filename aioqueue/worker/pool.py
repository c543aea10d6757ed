"""A pool of long-lived child processes, one pipe pair each, fed by the supervisor's loop.

Unlike ``concurrent.futures.ProcessPoolExecutor``, a child that dies or times out fails only its
own job: it is killed (TERM, then KILL) and replaced in the background while the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

import anyio

from .. import wire
from ._frames import HEADER, READY

__all__ = ("Pool",)

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


class Child:
    """One child process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.done = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self) -> bytes:
        try:
            head = await self.stdout.readexactly(4)
            (size,) = HEADER.unpack(head)
            return await self.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _ChildDied from exc

    async def call(self, data: bytes) -> bytes:
        """Send one frame and read the reply."""
        try:
            self.stdin.write(HEADER.pack(len(data)) + data)
            await self.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            raise _ChildDied from exc
        return await self._read()

    async def kill(self, grace: float) -> None:
        """TERM, then KILL after ``grace`` seconds; wait for the exit."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        await self.proc.wait()

    async def close(self, grace: float) -> None:
        """End of input: the child exits by itself; kill it if it does not within ``grace``."""
        with contextlib.suppress(Exception):
            self.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            await self.kill(grace)


class Pool:
    """``processes`` children running tasks of the queue at ``spec`` (``module:attr``).

    :param spawn: starts a background task (the supervisor's task group).
    """

    def __init__(
        self,
        spec: str,
        processes: int,
        *,
        spawn: Callable[..., object],
        max_tasks_per_child: int | None = None,
        kill_grace: float = 1.0,
        start_timeout: float = 60.0,
    ) -> None:
        self.spec = spec
        self.processes = processes
        self.max_tasks_per_child = max_tasks_per_child
        self.kill_grace = kill_grace
        self.start_timeout = start_timeout
        self._spawn = spawn
        self._idle: asyncio.Queue[Child] = asyncio.Queue()
        self.children: set[Child] = set()
        self.started = 0  # children started over the pool's life
        self._closing = False

    async def start(self) -> None:
        """Start every child and wait until each has imported the tasks."""
        children = await asyncio.gather(*(self._start_child() for _ in range(self.processes)))
        for child in children:
            self._idle.put_nowait(child)

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
        self.children.add(child)
        self.started += 1
        try:
            ready = await asyncio.wait_for(child._read(), self.start_timeout)
        except (_ChildDied, TimeoutError):
            await child.kill(self.kill_grace)
            self.children.discard(child)
            raise RuntimeError(
                f"a child process for {self.spec} failed to start "
                f"({_describe_exit(proc.returncode)}); see its error output above"
            ) from None
        if ready != READY:
            raise RuntimeError(f"child sent {ready[:20]!r} instead of a ready frame")
        return child

    def _replace(self, child: Child | None) -> None:
        """Retire ``child`` (if any) and start another in the background."""
        if child is not None:
            self.children.discard(child)
        if not self._closing:
            self._spawn(self._restart)

    async def _restart(self) -> None:
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
                self.children.discard(child)
                return
            self._idle.put_nowait(child)
            return

    async def run(self, data: bytes, timeout: float | None) -> wire.ChildReply:
        """Run one job (its envelope bytes) on an idle child; never raises for the job's sake.

        A timeout or the child's death gives a failed reply; the child is replaced. If the
        caller is cancelled (lease lost, shutdown), the child is killed and replaced too.
        """
        child = await self._idle.get()
        try:
            raw = await asyncio.wait_for(child.call(data), timeout)
        except TimeoutError:
            await child.kill(self.kill_grace)
            self._replace(child)
            return wire.ChildReply(
                ok=False,
                error=wire.ErrorInfo(
                    type="TimeoutError",
                    message=f"attempt exceeded its timeout of {timeout:g} s; its child was killed",
                    kind="timeout",
                ),
            )
        except _ChildDied:
            await child.kill(self.kill_grace)
            self._replace(child)
            how = _describe_exit(child.proc.returncode)
            return wire.ChildReply(
                ok=False,
                error=wire.ErrorInfo(
                    type="ChildDied",
                    message=f"the child process running the job died ({how})",
                    kind="crashed",
                ),
            )
        except BaseException:
            # cancelled mid-job (lease lost, shutdown): the child's state is unknown, so it goes
            with anyio.CancelScope(shield=True):
                await child.kill(self.kill_grace)
            self._replace(child)
            raise
        child.done += 1
        if self.max_tasks_per_child and child.done >= self.max_tasks_per_child:
            self._spawn(child.close, self.kill_grace)
            self._replace(child)
        else:
            self._idle.put_nowait(child)
        try:
            return wire.decode_child_reply(raw)
        except Exception as exc:
            return wire.ChildReply(
                ok=False,
                error=wire.ErrorInfo(type=type(exc).__name__, message=f"bad child reply: {exc}"),
            )

    async def close(self) -> None:
        """Close every child's input and wait for it to exit (killing stragglers)."""
        self._closing = True
        await asyncio.gather(
            *(c.close(self.kill_grace) for c in list(self.children)), return_exceptions=True
        )
        self.children.clear()

    def pids(self) -> list[int]:
        """Process ids of the live children."""
        return [c.pid for c in self.children if c.proc.returncode is None]
