"""The supervisor's side of one child process: its pipes, and the jobs written into it.

A :class:`Child` is the asyncio protocol of the child's pipes. It parses the frames the child
writes (:mod:`._frames`) and hands them to its pool a chunk at a time, buffers the frames the
pool writes until the pool flushes them (one system call for many jobs), and reports the
child's end once both its exit status is known and every frame it wrote has been read.

A :class:`Work` is one job handed to the pool; while it sits in a child's pipe it is in that
child's :attr:`Child.jobs`, in the order the child takes them. The first :attr:`Child.active` of
them are the ones it runs (or is about to): the first job; or, when that is an ``async def`` job
run concurrently, the concurrent jobs that follow it without a break, up to the child's
:attr:`Child.slots`. The child follows the same rule, so the supervisor knows without being told
which jobs have started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import msgspec

from .. import wire
from ._frames import HEADER, READY, START_FAILED, Reply, decode_reply

__all__ = (
    "CANCEL", "STEAL", "Child", "PoolStartError", "Work", "describe_exit", "spawn", "takeovers",
)  # fmt: skip

log = logging.getLogger(__name__)

STEAL = 1  # a withdrawal to run the job in another child: left where it is if it started
CANCEL = 2  # a withdrawal to give the job up: its child is killed if it started
EOF_GRACE = 1.0  # seconds to wait for a dead child's pipe to close (a grandchild may hold it)
_TRACEBACK_LINES = 20  # the end of a child's start-up traceback kept in errors


class PoolStartError(RuntimeError):
    """Raised when a child process can't start; the message holds the child's error."""


def describe_exit(code: int | None) -> str:
    """A child's exit status in words."""
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

    :ivar tag: the submitter's own reference, for :class:`~.pool.Pool`'s ``on_start``.
    :ivar started_at: ``time.monotonic()`` when its child started it (0 before).
    :ivar run_s: how long its child ran it, once the child replied.
    """

    __slots__ = (
        "seq", "task", "data", "timeout", "on_done", "finished", "child", "tag", "placed_at",
        "started_at", "run_s", "estimate", "withdraw", "concurrent", "active", "timer", "stop",
        "error",
    )  # fmt: skip

    def __init__(
        self,
        seq: int,
        task: str,
        data: bytearray,
        timeout: float | None,
        on_done: Callable[[wire.ChildReply | None], None],
        tag: Any = None,
        concurrent: bool = False,
    ) -> None:
        self.seq = seq
        self.task = task
        self.data = data  # the framed Run, written into a child (again, if it comes back)
        self.timeout = timeout
        self.on_done = on_done
        self.finished = False
        self.child: Child | None = None  # the child whose pipe holds it
        self.tag = tag
        self.placed_at = 0.0  # when it was last written into a child
        self.started_at = 0.0
        self.run_s: float | None = None
        self.estimate = 0.0  # its task's estimated run time when it was queued
        self.withdraw = 0  # STEAL or CANCEL while a withdrawal is unanswered
        self.concurrent = concurrent  # an async def job, run beside others on its child's loop
        self.active = False  # among the jobs its child runs (or is about to)
        self.timer: asyncio.TimerHandle | None = None  # its timeout, or the wait for its stop
        self.stop = 0  # while a stop of it (see .running) is unanswered: why
        self.error: wire.ErrorInfo | None = None  # what it fails with if its child dies first

    @property
    def started(self) -> bool:
        """True once its child has started it: cancelling it then stops it (see .running)."""
        return self.started_at > 0

    @property
    def queued(self) -> bool:
        """True while it waits in a child's pipe behind the job that child runs."""
        return self.child is not None and not self.started

    def _finish(self, reply: wire.ChildReply | None) -> None:
        if not self.finished:
            self.finished = True
            self.on_done(reply)


Frames = list[Reply]


class Child(asyncio.SubprocessProtocol):
    """One child process, its pipes and the jobs written into it.

    :param on_frames: called with each chunk of frames the child wrote, after its first.
    :param on_exit: called once, when the child has exited and all it wrote has been read.
    """

    def __init__(
        self,
        on_frames: Callable[[Child, Frames], None],
        on_exit: Callable[[Child], None],
    ) -> None:
        self.on_frames = on_frames
        self.on_exit = on_exit
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.pid = 0
        self.first: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.jobs: deque[Work] = deque()  # written into it and not answered, in its order
        self.seqs: dict[int, Work] = {}  # the same, by seq
        self.slots = 1  # concurrent jobs it runs at once (its --async-concurrency)
        self.active = 0  # the first jobs in ``jobs`` that it runs, or is about to
        self.load_s = 0.0  # estimated run time of the jobs in ``jobs``
        self.active_s = 0.0  # of the active ones
        self.out: list[bytes | bytearray] = []  # frames to write at the pool's next flush
        self.done = 0  # jobs it answered with Done
        self.last_end = 0.0  # when its last job ended (its clock is ours)
        self.in_service = False  # counted in the pool's capacity
        self.dead = False  # being killed: its frames, if more still come, are ignored
        self.replaced = False  # a replacement has been started for it
        self.input_closed = False  # the pool closed its input: it exits when it is done
        self.budget: int | None = None  # jobs it may run in all, once set (memory: .limits)
        self.killed_for: wire.ErrorInfo | None = None  # why it was killed, for its job's error
        self.exited = asyncio.Event()
        self._buffer = bytearray()
        self._eof = False
        self._ended = False

    # -- the protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have these methods without deriving from asyncio's classes
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self.pid = self.transport.get_pid()
        self.stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        at, size = 0, len(buf)
        while size - at >= HEADER.size:
            (n,) = HEADER.unpack_from(buf, at)
            end = at + HEADER.size + n
            if end > size:
                break
            frames.append(bytes(buf[at + HEADER.size : end]))
            at = end
        del buf[:at]
        if not frames:
            return
        if not self.first.done():
            self.first.set_result(frames.pop(0))
        if frames and not self.dead:
            self._deliver(frames)

    def _deliver(self, frames: list[bytes]) -> None:
        try:
            decoded = [decode_reply(f) for f in frames]
        except msgspec.DecodeError as exc:
            self.fail(f"sent a frame that is not a reply ({exc})")
            return
        self.on_frames(self, decoded)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._eof = True
            self._end()

    def process_exited(self) -> None:
        if not self._eof:
            asyncio.get_running_loop().call_later(EOF_GRACE, self._give_up_on_eof)
        self._end()

    def _give_up_on_eof(self) -> None:
        self._eof = True
        self._end()

    def _end(self) -> None:
        if not self.first.done():
            self.first.set_result(None)
        if self._ended or not self._eof or self.returncode is None:
            return
        self._ended = True
        self.dead = True
        if self.transport is not None:
            self.transport.close()
        self.on_exit(self)
        self.exited.set()

    # -- control ---------------------------------------------------------------------------

    def failure(self) -> wire.ErrorInfo:
        """Why the jobs it was running failed, when none has an error of its own: a limit, or
        its death."""
        if self.killed_for is not None:
            return self.killed_for
        return wire.ErrorInfo(
            type="ChildDied",
            message=f"the child process running the job died ({describe_exit(self.returncode)})",
            kind="crashed",
        )

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode() if self.transport is not None else None

    def fail(self, why: str) -> None:
        """The child broke the protocol: kill it (its jobs are then dealt with as on a death)."""
        log.error("child %d %s; killing it", self.pid, why)
        self.kill(0.0)

    def signal(self, sig: int) -> None:
        if self.transport is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.send_signal(sig)

    def kill(self, grace: float) -> None:
        """TERM now, KILL after ``grace`` seconds if it is still there."""
        self.dead = True
        self.signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self.signal, signal.SIGKILL)

    def kill_for(self, why: wire.ErrorInfo, grace: float) -> None:
        """Kill it (as :meth:`kill`); the jobs it runs fail with ``why``."""
        if not self.dead:
            self.killed_for = why
            self.kill(grace)

    def flush(self) -> None:
        """Write the frames buffered for the child, in one system call."""
        out, self.out = self.out, []
        if out and self.stdin is not None and not (self.input_closed or self.dead):
            self.stdin.writelines(out)

    def close_input(self) -> None:
        """End of input: the child finishes its job (and the one it was given, if it had not
        started it yet) and exits."""
        self.flush()
        self.input_closed = True
        if self.stdin is not None:
            self.stdin.close()

    async def close(self, grace: float) -> None:
        """Close its input; kill it if it has not exited within ``grace`` seconds."""
        self.close_input()
        try:
            await asyncio.wait_for(self.exited.wait(), grace)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.exited.wait()

    # -- its jobs --------------------------------------------------------------------------

    def add(self, work: Work, now: float) -> bool:
        """Queue ``work`` in this child (written at the next flush); True if it runs at once."""
        work.child = self
        work.placed_at = now
        self.jobs.append(work)
        self.seqs[work.seq] = work
        self.load_s += work.estimate
        self.out.append(work.data)
        if self.active == len(self.jobs) - 1 and self._joins(work):
            self._join(work)
            return True
        return False

    def remove(self, work: Work) -> list[Work]:
        """``work`` was answered or given back: it is no longer in this child. Returns the jobs
        that join the active ones now that it is gone."""
        self.jobs.remove(work)
        del self.seqs[work.seq]
        self.load_s -= work.estimate
        if work.active:
            work.active = False
            self.active -= 1
            self.active_s -= work.estimate
        work.child = None
        if not self.jobs:
            self.load_s = self.active_s = 0.0  # no drift from float sums
            return []
        joined: list[Work] = []
        while self.active < len(self.jobs) and self._joins(self.jobs[self.active]):
            joined.append(self.jobs[self.active])
            self._join(joined[-1])
        return joined

    def clear(self) -> list[Work]:
        """Its jobs, in order, taken out of it (it died); each keeps its ``active`` flag."""
        jobs = list(self.jobs)
        self.jobs.clear()
        self.seqs.clear()
        self.active, self.load_s, self.active_s = 0, 0.0, 0.0
        return jobs

    def starts(self, work: Work) -> bool:
        """Would ``work``, added now, run at once?"""
        return self.active == len(self.jobs) and self._joins(work)

    def _joins(self, work: Work) -> bool:
        """May ``work``, next after the active jobs, join them?"""
        if not self.active:
            return True
        return self.active < self.slots and work.concurrent and self.jobs[0].concurrent

    def _join(self, work: Work) -> None:
        work.active = True
        self.active += 1
        self.active_s += work.estimate

    def takeover(self, now: float, after: float) -> tuple[Work | None, float, float]:
        """The last job queued here, if another child may take it over (no withdrawal on its
        way); how long it would still wait here; and when that wait will pass ``after``
        seconds, if it has not yet (else infinity)."""
        never = float("inf")
        if len(self.jobs) < 2 or self.dead:
            return None, 0.0, never
        last, head = self.jobs[-1], self.jobs[0]
        if last.withdraw or last.active or last.started or not head.started:
            return None, 0.0, never
        ran = now - head.started_at
        # the head's time left: the rest of its estimate or, once past it, as long again
        left = head.estimate - ran if ran < head.estimate else ran
        wait = left + self.queued_s - last.estimate
        return last, wait, never if wait > after else head.started_at + max(head.estimate, after)

    def room(self, limit: int | None) -> bool:
        """Can it take another job into its pipe (before the queuing rule), given the jobs it
        may run in its life (``limit``, None: no limit; or its :attr:`budget`)?"""
        limit = _least(limit, self.budget)
        return (
            self.in_service
            and not self.dead
            and (limit is None or self.done + len(self.jobs) < limit)
        )

    def spent(self, limit: int | None) -> bool:
        """Has it run all the jobs it may (``limit`` or its :attr:`budget`)? Then it retires."""
        limit = _least(limit, self.budget)
        return limit is not None and self.done >= limit

    @property
    def queued(self) -> int:
        """Jobs waiting behind the ones it runs."""
        return len(self.jobs) - self.active

    @property
    def queued_s(self) -> float:
        """Estimated run time of the jobs waiting behind the ones it runs."""
        return self.load_s - self.active_s

    @property
    def free(self) -> bool:
        """Could it start another job now: it has none, or runs concurrent jobs with a slot
        free and none waiting?"""
        return not self.jobs or (
            self.jobs[0].concurrent and self.active == len(self.jobs) < self.slots
        )


def _least(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def takeovers(
    children: list[Child], idle: int, now: float, after: float
) -> tuple[list[Work], float]:
    """Jobs queued in ``children`` that ``idle`` idle children should take over: the last one
    of each child where it would still wait more than ``after`` seconds; and the soonest time
    another may qualify (infinity: none)."""
    taken: list[Work] = []
    recheck = float("inf")
    for child in children:
        if len(taken) >= idle:
            break
        last, wait, when = child.takeover(now, after)
        if last is not None and wait > after:
            taken.append(last)
        recheck = min(recheck, when)
    return taken, recheck


async def spawn(
    spec: str,
    start_timeout: float,
    on_frames: Callable[[Child, Frames], None],
    on_exit: Callable[[Child], None],
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Child:
    """Start a child for the queue at ``spec`` (``args`` after it on its command line, ``env``
    added to its environment) and wait until it has imported the tasks and run the queue's
    start hooks.

    :raises PoolStartError: if it could not (its error in the message), or was not ready
        within ``start_timeout`` seconds; the child is gone by then.
    """
    child = Child(on_frames, on_exit)
    await asyncio.get_running_loop().subprocess_exec(
        lambda: child,
        sys.executable, "-m", "aioqueue.worker._child", spec, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    late = False
    try:
        first = await asyncio.wait_for(asyncio.shield(child.first), start_timeout)
    except TimeoutError:
        first, late = None, True
    except BaseException:
        child.signal(signal.SIGKILL)
        raise
    if first == READY:
        return child
    child.signal(signal.SIGKILL)
    await child.exited.wait()
    if first is None:
        what = f"not ready within {start_timeout:g} s" if late else describe_exit(child.returncode)
        raise PoolStartError(
            f"a child process for {spec} failed to start ({what}); see its error output"
        )
    if first.startswith(START_FAILED):
        report = first[len(START_FAILED) :].decode(errors="replace").rstrip()
        tail = "\n".join(report.splitlines()[-_TRACEBACK_LINES:])
        raise PoolStartError(f"a child process could not start {spec}:\n{tail}")
    raise PoolStartError(f"a child process sent {first[:20]!r} instead of a ready frame")
