"""Runs inside a worker's child process: reads jobs from its pipe, runs them, writes replies.

Frames are a 4-byte big-endian length and the bytes. The first frame the child sends is
``b"ready"``; then one reply per job. The child exits on end of input, and the kernel kills it
when its supervisor dies (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import signal
import sys
import traceback
from typing import Any

import msgspec

from .. import wire
from .._imports import import_queue
from ..queue import Queue
from ._frames import HEADER, READY

_args_decoder = msgspec.msgpack.Decoder(list[Any])
_kwargs_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_envelope_decoder = msgspec.msgpack.Decoder(wire.Envelope)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the supervisor died before the line above ran
        os._exit(1)


def read_frame(fd: int) -> bytes | None:
    """Read one frame; None at end of input."""
    head = _read_exactly(fd, 4)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    body = _read_exactly(fd, size)
    return body


def _read_exactly(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def write_frame(fd: int, data: bytes) -> None:
    """Write one frame."""
    view = memoryview(HEADER.pack(len(data)) + data)
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


def run_job(queue: Queue, data: bytes) -> wire.ChildReply:
    """Decode one envelope, run its task, and encode what came of it."""
    try:
        env = _envelope_decoder.decode(data)
        td = queue.tasks.get(env.task)
        if td is None:
            return wire.ChildReply(
                ok=False,
                error=wire.ErrorInfo(
                    type="UnknownTask",
                    message=f"no task named {env.task!r} in queue {queue.name!r}",
                    kind="unknown_task",
                ),
            )
        args = _args_decoder.decode(env.args)
        kwargs = _kwargs_decoder.decode(env.kwargs)
        bound_args, bound_kwargs = td.check(tuple(args), kwargs, strict=False)
    except Exception as exc:  # malformed arguments: not the task's fault, but this job's
        return wire.ChildReply(ok=False, error=_error(exc, "malformed"))
    try:
        value = td.fn(*bound_args, **bound_kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except Exception as exc:
        return wire.ChildReply(ok=False, error=_error(exc))
    try:
        return wire.ChildReply(ok=True, value=msgspec.Raw(wire.encode(value)))
    except (TypeError, ValueError, OverflowError) as exc:
        err = wire.ErrorInfo(
            type="SerializationError",
            message=f"{env.task} returned a {type(value).__name__} that can't be encoded: {exc}",
        )
        return wire.ChildReply(ok=False, error=err)


async def _await(aw: Any) -> Any:
    return await aw


def main(argv: list[str]) -> None:
    """Entry point of a child: ``python -m aioqueue.worker._child MODULE:ATTR``."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    out_fd = os.dup(1)
    os.dup2(2, 1)  # user code that prints writes to stderr, never into the reply pipe
    in_fd = 0
    queue = import_queue(argv[1])
    write_frame(out_fd, READY)
    while True:
        data = read_frame(in_fd)
        if data is None:
            return
        write_frame(out_fd, wire.encode(run_job(queue, data)))


if __name__ == "__main__":
    main(sys.argv)
