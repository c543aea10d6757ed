"""Runs inside a worker's child process: takes jobs from its pipe, runs them, writes replies.

The protocol is in :mod:`._frames`. The child first imports its queue and runs the queue's
start hooks (:mod:`._lifecycle`), and sends ``READY``; or, if either fails, ``START_FAILED`` and
the traceback, and exits non-zero. Then two threads share the work:

* a reader thread drains the pipe as it fills: jobs go into the child's :class:`Inbox`, and a
  withdrawal is answered at once, even while a long job runs: given back if the job is still
  in the inbox (it will never run), else "already taken";
* the main thread takes jobs from the inbox in order and runs them, one at a time, answering
  each with a :class:`~._frames.Done` before it takes the next; or, for ``async def`` jobs the
  supervisor marked concurrent, several at once on the event loop (:mod:`._concurrent`).

``async def`` tasks run on one event loop, created for the first of them and kept for the
child's life. At end of input the child finishes its job, and at most one more it holds (a
supervisor that closes a child's input withdraws the queued ones first), runs the queue's stop
hooks, and exits. The kernel kills it when its supervisor dies (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import gc
import inspect
import io
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec

from .. import context, wire
from .._imports import import_queue
from ..queue import Queue
from ..urls import schemes_only
from ._concurrent import Concurrent, split_args, stopped_reply
from ._frames import (
    HEADER,
    READY,
    START_FAILED,
    URL_ENV,
    Cancel,
    Done,
    Extend,
    Report,
    Run,
    Withdrawn,
    decode_request,
    frame,
    frame_bytes,
)
from ._lifecycle import Lifecycle

_args_decoder = msgspec.msgpack.Decoder(list[Any])
_kwargs_decoder = msgspec.msgpack.Decoder(dict[str, Any])

EXIT_PROTOCOL = 70  # the supervisor sent something that is no frame of ours


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the supervisor died before the line above ran
        os._exit(1)


def read_frame(stream: io.BufferedReader) -> bytes | None:
    """Read one frame; None at end of input."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def write_all(fd: int, data: bytes | bytearray) -> None:
    """Write all of ``data`` (one system call unless the pipe is full)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Replies:
    """The reply pipe, written by both threads: one frame at a time, whole."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, obj: Any) -> None:
        data = frame(obj)
        with self._lock:
            write_all(self.fd, data)


class Inbox:
    """Jobs received and not taken yet, in order; a withdrawal takes one back out.

    A withdrawal is answered under the inbox's lock, so the main thread cannot take its next
    job before the answer is in the pipe: what the pipe holds always says which job runs.
    While concurrent jobs run, the event loop is woken (``set_wake``) when the inbox changes.
    """

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self._ready = threading.Condition(threading.Lock())
        self._jobs: deque[Run] = deque()
        self._closed = False
        self._cancels: dict[int, float | None] = {}  # stops asked of jobs taken: seq -> timeout
        self._wake: Callable[[], object] | None = None

    def set_wake(self, wake: Callable[[], object] | None) -> None:
        """Call ``wake`` (from the reader thread) whenever a job, a stop or the end comes."""
        with self._ready:
            self._wake = wake

    def _woken(self) -> None:
        self._ready.notify()
        if self._wake is not None:
            self._wake()

    def put(self, run: Run) -> None:
        with self._ready:
            self._jobs.append(run)
            self._woken()

    def cancel(self, seq: int, timeout: float | None) -> None:
        """Stop concurrent job ``seq``: answered at once if it is still here (it never runs);
        else left for the event loop, which cancels it if it runs."""
        with self._ready:
            for i, run in enumerate(self._jobs):
                if run.seq == seq:
                    del self._jobs[i]
                    now = time.monotonic()
                    self.replies.send(Done(seq, now, now, stopped_reply(timeout)))
                    self._woken()
                    return
            self._cancels[seq] = timeout
            self._woken()

    def take_cancels(self) -> dict[int, float | None]:
        """The stops asked since the last call."""
        with self._ready:
            cancels, self._cancels = self._cancels, {}
            return cancels

    def take_concurrent(self) -> Run | None:
        """The next job if it is a concurrent one (never waits)."""
        with self._ready:
            return self._jobs.popleft() if self._jobs and self._jobs[0].concurrent else None

    def next_concurrent(self) -> bool:
        """Is the next job a concurrent one?"""
        with self._ready:
            return bool(self._jobs) and self._jobs[0].concurrent

    def withdraw(self, seq: int) -> None:
        with self._ready:
            for i, run in enumerate(self._jobs):
                if run.seq == seq:
                    del self._jobs[i]
                    self.replies.send(Withdrawn(seq, True))
                    return
            self.replies.send(Withdrawn(seq, False))

    def close(self) -> None:
        """End of input: at most one job not taken yet still runs, then :meth:`take` returns
        None. A supervisor that closes a child's input has withdrawn its queued jobs, so what
        is left is the one it was starting; one that died did not, and its jobs go elsewhere."""
        with self._ready:
            self._closed = True
            while len(self._jobs) > 1:
                self._jobs.pop()
            self._woken()

    def take(self) -> Run | None:
        """The next job, waiting for one; None once closed and empty."""
        with self._ready:
            while not self._jobs and not self._closed:
                self._ready.wait()
            return self._jobs.popleft() if self._jobs else None


def _read(stdin: io.BufferedReader, inbox: Inbox) -> None:
    """The reader thread: drain the pipe into the inbox, answer withdrawals."""
    try:
        while (data := read_frame(stdin)) is not None:
            request = decode_request(data)
            if isinstance(request, Run):
                inbox.put(request)
            elif isinstance(request, Cancel):
                inbox.cancel(request.seq, request.timeout)
            else:
                inbox.withdraw(request.seq)
    except Exception:  # the supervisor's bytes are no frames of ours: nothing can be trusted
        traceback.print_exc()
        os._exit(EXIT_PROTOCOL)
    inbox.close()


def _error(exc: BaseException, kind: str = "raised") -> wire.ErrorInfo:
    return wire.ErrorInfo(
        type=type(exc).__qualname__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        kind=kind,
    )


def _failed(exc: BaseException) -> wire.ChildReply:
    """The reply of a task that raised ``exc`` (a retry or a snooze it asked for, or an error)."""
    if isinstance(exc, context.Retry):
        return wire.ChildReply(ok=False, error=_error(exc, "retry"), delay=exc.delay)
    if isinstance(exc, context.Snooze):
        return wire.ChildReply(ok=False, error=_error(exc, "snooze"), delay=exc.delay)
    return wire.ChildReply(ok=False, error=_error(exc))


class Runner:
    """Runs the jobs of one queue: looks the task up, checks its arguments, calls it with its
    :class:`~aioqueue.context.JobContext` current; ``replies`` carries what the task reports."""

    def __init__(self, queue: Queue, replies: Replies) -> None:
        self.queue = queue
        self.replies = replies
        self._loop: asyncio.Runner | None = None  # for async def tasks, made on first use

    def run(self, seq: int, job: wire.ChildJob) -> wire.ChildReply:
        """Run job ``seq`` and say what came of it; its last progress report is sent first."""
        with self._context(seq, job):
            call = self._call(job)
            if isinstance(call, wire.ChildReply):
                return call
            try:
                value = call()
                if inspect.isawaitable(value):
                    value = self._wait(value)
            except (Exception, asyncio.CancelledError) as exc:
                return _failed(exc)
            return self._encode(job, value)

    async def run_async(
        self,
        seq: int,
        job: wire.ChildJob,
        stopped: Callable[[], wire.ChildReply | None],
        wrap: Callable[[Awaitable[Any]], Awaitable[Any]],
    ) -> wire.ChildReply:
        """Run job ``seq`` on the running loop, in the calling task's context (as :meth:`run`);
        ``wrap`` wraps what the task returns to be awaited; a ``CancelledError`` that ends it
        is answered with ``stopped()``, when that is not None (its stop was asked)."""
        with self._context(seq, job):
            call = self._call(job)
            if isinstance(call, wire.ChildReply):
                return call
            try:
                value = call()
                if inspect.isawaitable(value):
                    value = await wrap(value)
            except asyncio.CancelledError as exc:
                return stopped() or _failed(exc)
            except Exception as exc:
                return _failed(exc)
            return self._encode(job, value)

    @contextlib.contextmanager
    def _context(self, seq: int, job: wire.ChildJob) -> Iterator[None]:
        """Job ``seq``'s :class:`~aioqueue.context.JobContext`, current while it runs."""
        send = self.replies.send
        ctx = context.JobContext(
            job.id, job.attempt, job.task, self.queue.name, _progress(job.progress),
            lambda data: send(Report(seq, msgspec.Raw(data))),
            lambda seconds: send(Extend(seq, seconds)),
        )  # fmt: skip
        token = context.enter(ctx)
        try:
            yield
        finally:
            context.leave(token)
            ctx.close()

    def _call(self, job: wire.ChildJob) -> Callable[[], Any] | wire.ChildReply:
        """The task's call with the job's arguments; or the reply, if there is none to make."""
        td = self.queue.tasks.get(job.task)
        if td is None:
            return wire.ChildReply(
                ok=False,
                error=wire.ErrorInfo(
                    type="UnknownTask",
                    message=f"no task named {job.task!r} in queue {self.queue.name!r}",
                    kind="unknown_task",
                ),
            )
        try:
            args = _args_decoder.decode(job.args)
            kwargs = _kwargs_decoder.decode(job.kwargs)
            bound_args, bound_kwargs = td.check(tuple(args), kwargs, strict=False)
        except Exception as exc:  # malformed arguments: not the task's fault, but this job's
            return wire.ChildReply(ok=False, error=_error(exc, "malformed"))
        return lambda: td.fn(*bound_args, **bound_kwargs)

    @staticmethod
    def _encode(job: wire.ChildJob, value: Any) -> wire.ChildReply:
        try:
            return wire.ChildReply(ok=True, value=msgspec.Raw(wire.encode(value)))
        except (TypeError, ValueError, OverflowError) as exc:
            err = wire.ErrorInfo(
                type="SerializationError",
                message=f"{job.task} returned a {type(value).__name__} that can't be encoded: "
                f"{exc}",
            )
            return wire.ChildReply(ok=False, error=err)

    def loop(self) -> asyncio.Runner:
        """The child's event loop, made on first use."""
        if self._loop is None:
            self._loop = asyncio.Runner()
        return self._loop

    def _wait(self, aw: Any) -> Any:
        # the loop's own context was copied when it was made: run in the job's
        return self.loop().run(_await(aw), context=contextvars.copy_context())

    def close(self) -> None:
        """Close the event loop, if an async task made one."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None


async def _await(aw: Any) -> Any:
    return await aw


def _progress(data: msgspec.Raw) -> wire.Progress | None:
    """The job's last progress as the supervisor passed it on (None if none, or unreadable)."""
    if bytes(data) == bytes(wire.NIL):
        return None
    try:
        return wire.decode_progress(bytes(data))
    except msgspec.DecodeError:
        return None


def main(argv: list[str]) -> None:
    """Entry point of a child: ``python -m aioqueue.worker._child MODULE:ATTR [LIMITS]``
    (the limits as :meth:`.limits.Limits.child_args` writes them)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    out_fd = os.dup(1)
    os.dup2(2, 1)  # user code that prints writes to stderr, never into the reply pipe
    stdin = os.fdopen(0, "rb", closefd=False)
    assert isinstance(stdin, io.BufferedReader)
    replies = Replies(out_fd)
    try:
        with schemes_only():  # the supervisor checked the URL: no Redis client loads here
            queue = import_queue(argv[1])
        queue.redis_url = os.environ.pop(URL_ENV, queue.redis_url)  # the worker's Redis
        runner = Runner(queue, replies)
        args, limit = split_args(argv[2:])
        life = Lifecycle(queue, runner._wait, args)  # start hooks: may fail the start too
    except BaseException:  # even SystemExit: the supervisor reports it and decides what next
        report = START_FAILED + traceback.format_exc().encode(errors="replace")
        write_all(out_fd, frame_bytes(report))
        sys.exit(1)
    gc.freeze()  # the imports and what the start hooks built stay: the collector skips them
    inbox = Inbox(replies)
    concurrent = Concurrent(runner, inbox, limit, life.cpu)
    write_all(out_fd, frame_bytes(READY))
    threading.Thread(target=_read, args=(stdin, inbox), name="aioqueue-inbox", daemon=True).start()
    clock = time.monotonic
    try:
        while (run := inbox.take()) is not None:
            if run.concurrent:
                concurrent.serve(run)
                continue
            life.before_job()
            started = clock()
            reply = runner.run(run.seq, run.job)
            replies.send(Done(run.seq, started, clock(), reply))
        life.stop()  # the input ended: not after a crash
    finally:
        runner.close()


if __name__ == "__main__":
    main(sys.argv)
