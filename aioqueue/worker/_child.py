"""Runs inside a worker's child process: reads jobs from its pipe, runs them, writes replies.

The protocol is in :mod:`._frames`. The child first imports its queue and sends ``READY``, or
``START_FAILED`` and the traceback, and exits non-zero. Then it runs one
:class:`~aioqueue.wire.ChildJob` at a time and answers each with a
:class:`~aioqueue.wire.ChildReply`. ``async def`` tasks run on one event loop, created for the
first of them and kept for the child's life. The child exits on end of input, and the kernel
kills it when its supervisor dies (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import io
import os
import signal
import sys
import traceback
from typing import Any

import msgspec

from .. import wire
from .._imports import import_queue
from ..queue import Queue
from ._frames import HEADER, READY, START_FAILED, frame, frame_bytes

_args_decoder = msgspec.msgpack.Decoder(list[Any])
_kwargs_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_job_decoder = msgspec.msgpack.Decoder(wire.ChildJob)


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


def _error(exc: BaseException, kind: str = "raised") -> wire.ErrorInfo:
    return wire.ErrorInfo(
        type=type(exc).__qualname__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        kind=kind,
    )


class Runner:
    """Runs the jobs of one queue: looks the task up, checks its arguments, calls it."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._loop: asyncio.Runner | None = None  # for async def tasks, made on first use

    def run(self, data: bytes) -> wire.ChildReply:
        """Run one job (an encoded :class:`~aioqueue.wire.ChildJob`) and say what came of it."""
        try:
            job = _job_decoder.decode(data)
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
            args = _args_decoder.decode(job.args)
            kwargs = _kwargs_decoder.decode(job.kwargs)
            bound_args, bound_kwargs = td.check(tuple(args), kwargs, strict=False)
        except Exception as exc:  # malformed arguments: not the task's fault, but this job's
            return wire.ChildReply(ok=False, error=_error(exc, "malformed"))
        try:
            value = td.fn(*bound_args, **bound_kwargs)
            if inspect.isawaitable(value):
                value = self._wait(value)
        except (Exception, asyncio.CancelledError) as exc:
            return wire.ChildReply(ok=False, error=_error(exc))
        try:
            return wire.ChildReply(ok=True, value=msgspec.Raw(wire.encode(value)))
        except (TypeError, ValueError, OverflowError) as exc:
            err = wire.ErrorInfo(
                type="SerializationError",
                message=f"{job.task} returned a {type(value).__name__} that can't be encoded: "
                f"{exc}",
            )
            return wire.ChildReply(ok=False, error=err)

    def _wait(self, aw: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.Runner()
        return self._loop.run(_await(aw))

    def close(self) -> None:
        """Close the event loop, if an async task made one."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None


async def _await(aw: Any) -> Any:
    return await aw


def main(argv: list[str]) -> None:
    """Entry point of a child: ``python -m aioqueue.worker._child MODULE:ATTR``."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    out_fd = os.dup(1)
    os.dup2(2, 1)  # user code that prints writes to stderr, never into the reply pipe
    stdin = os.fdopen(0, "rb", closefd=False)
    assert isinstance(stdin, io.BufferedReader)
    try:
        queue = import_queue(argv[1])
    except BaseException:  # even SystemExit: the supervisor reports it and decides what next
        report = START_FAILED + traceback.format_exc().encode(errors="replace")
        write_all(out_fd, frame_bytes(report))
        sys.exit(1)
    write_all(out_fd, frame_bytes(READY))
    runner = Runner(queue)
    try:
        while (data := read_frame(stdin)) is not None:
            write_all(out_fd, frame(runner.run(data)))
    finally:
        runner.close()


if __name__ == "__main__":
    main(sys.argv)
