"""The pipe protocol between a supervisor and its children: length-prefixed msgpack frames.

Each frame is a 4-byte big-endian length and that many bytes. A child's first frame says
whether it could import its tasks: :data:`READY`, or :data:`START_FAILED` followed by the
formatted traceback (UTF-8), after which it exits. Then:

* the supervisor sends :class:`Run` (a job, numbered by ``seq``), :class:`Withdraw` (give a
  job back that you have not started) and :class:`Cancel` (stop an ``async def`` job run
  concurrently: one not started yet is answered at once, a running one's asyncio task is
  cancelled; either way a :class:`Done` answers it);
* the child answers each job it ran with :class:`Done`, and each withdrawal with
  :class:`Withdrawn`: ``ok`` when the job was still queued (it will never run), false when the
  child had already taken it (it is running or done; its :class:`Done` comes or came);
* while a job runs, its task may send :class:`Report` (its progress) and :class:`Extend` (more
  time before its timeout), always before the job's :class:`Done`.

A child learns the URL of the Redis its worker serves from :data:`URL_ENV` in its environment,
not its command line (the URL may hold a password), and gives it to its queue: a task that
submits jobs reaches that Redis, whatever URL the task module names.

A child takes jobs in the order they came: one at a time, or, for jobs marked ``concurrent``
(``async def`` tasks), as many at once as its ``--async-concurrency`` allows, each started the
moment it is taken, never alongside a sync job. It writes a job's :class:`Done`, and answers a
withdrawal, before it takes another job into the slot that freed, so after a child's death the
frames it left in the pipe tell which jobs it may have been running: the first ones neither done
nor withdrawn, as many as it runs at once. A concurrent job's :class:`Done` may come before
those of jobs it was written after.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from .. import wire

__all__ = (
    "HEADER",
    "READY",
    "START_FAILED",
    "URL_ENV",
    "Cancel",
    "Done",
    "Extend",
    "Report",
    "Run",
    "Withdraw",
    "Withdrawn",
    "decode_reply",
    "decode_request",
    "frame",
    "frame_bytes",
    "timeout_error",
)

HEADER = struct.Struct(">I")  # frame length, big-endian
READY = b"ready"  # a child's first frame, once it has imported the tasks
START_FAILED = b"start-failed\n"  # a child's first frame instead, then its traceback
URL_ENV = "AIOQUEUE_CHILD_REDIS_URL"  # the worker's Redis URL, for the child's queue


class Run(msgspec.Struct, frozen=True, array_like=True, tag=1):
    """Supervisor → child: queue this job; ``seq`` names it in the answers. A ``concurrent``
    job runs on the child's event loop beside others of its kind."""

    seq: int
    job: wire.ChildJob
    concurrent: bool = False


class Withdraw(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """Supervisor → child: give back job ``seq`` if it has not started."""

    seq: int


class Cancel(msgspec.Struct, frozen=True, array_like=True, tag=3):
    """Supervisor → child: stop concurrent job ``seq``: it ran past its ``timeout`` (seconds),
    or, when None, the supervisor gave it up."""

    seq: int
    timeout: float | None = None


class Done(msgspec.Struct, frozen=True, array_like=True, tag=1):
    """Child → supervisor: job ``seq`` ran from ``started`` to ``ended`` (``time.monotonic()``,
    a clock the supervisor shares) and this came of it."""

    seq: int
    started: float
    ended: float
    reply: wire.ChildReply


class Withdrawn(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """Child → supervisor: job ``seq`` was given back (``ok``), or had already been taken."""

    seq: int
    ok: bool


class Report(msgspec.Struct, frozen=True, array_like=True, tag=3):
    """Child → supervisor: job ``seq`` reported its progress (an encoded ``wire.Progress``)."""

    seq: int
    progress: msgspec.Raw


class Extend(msgspec.Struct, frozen=True, array_like=True, tag=4):
    """Child → supervisor: job ``seq`` may run until at least ``seconds`` from now."""

    seq: int
    seconds: float


Request = Run | Withdraw | Cancel
Reply = Done | Withdrawn | Report | Extend

_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_replies = msgspec.msgpack.Decoder(Reply)


def timeout_error(seconds: float | None, then: str) -> wire.ErrorInfo:
    """The error of an attempt that ran past its timeout of ``seconds``; ``then``: what was done
    about it."""
    return wire.ErrorInfo(
        type="TimeoutError",
        message=f"attempt exceeded its timeout of {seconds or 0:g} s; {then}",
        kind="timeout",
    )


def decode_request(data: bytes) -> Request:
    """A frame from the supervisor (in a child).

    :raises msgspec.DecodeError: if it is neither.
    """
    return _requests.decode(data)


def decode_reply(data: bytes | memoryview) -> Reply:
    """A frame from a child (in the supervisor).

    :raises msgspec.DecodeError: if it is neither.
    """
    return _replies.decode(data)


def frame(obj: Any) -> bytearray:
    """``obj`` as msgpack, framed: header and body in one buffer, for one write."""
    buf = bytearray(HEADER.size)
    _encoder.encode_into(obj, buf, HEADER.size)
    HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
    return buf


def frame_bytes(data: bytes) -> bytes:
    """``data`` framed as is."""
    return HEADER.pack(len(data)) + data
