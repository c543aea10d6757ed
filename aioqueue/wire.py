"""The wire format: the only place that defines the bytes stored in Redis and sent to children.

Everything is msgpack of declared msgspec Structs with a version field; nothing read from Redis
is unpickled or evaluated. The supervisor decodes an :class:`Envelope` with its arguments left as
``msgspec.Raw``, so it never decodes arguments it does not need.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

__all__ = (
    "WIRE_VERSION",
    "ChildJob",
    "ChildReply",
    "Envelope",
    "ErrorInfo",
    "Outcome",
    "Progress",
    "decode_child_reply",
    "decode_envelope",
    "decode_errors",
    "decode_outcome",
    "decode_progress",
    "encode",
)

WIRE_VERSION = 1
EMPTY_ARGS = msgspec.Raw(b"\x90")  # msgpack []
EMPTY_KWARGS = msgspec.Raw(b"\x80")  # msgpack {}
NIL = msgspec.Raw(b"\xc0")  # msgpack nil


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One job as submitted: stored in the queue's ``jobs`` hash; a child gets a ChildJob."""

    v: int
    id: str
    task: str
    args: msgspec.Raw = EMPTY_ARGS
    kwargs: msgspec.Raw = EMPTY_KWARGS
    retries: int | None = None  # None: the task's default, as the worker knows it
    timeout: float | None = None  # seconds; None: the task's default
    priority: int = 0
    key: str | None = None  # de-duplication key
    result_ttl: float | None = None  # seconds; None: the queue's default
    submitted: float = 0.0  # producer's wall clock, for latency figures only
    trace: dict[str, str] | None = None  # W3C trace context current at submit (tracing.py)
    expires: float | None = None  # the producer's wall clock past which it must not start
    after: list[str] | None = None  # ids of the jobs whose results come first in its arguments
    group: str | None = None  # per-key concurrency group (its limit is kept in Redis)


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One attempt's failure."""

    type: str
    message: str
    traceback: str = ""
    attempt: int = 0
    kind: str = "raised"  # raised, timeout, crashed, lost, unknown_task, malformed, expired,
    # retry (the task asked for one), snooze (the task asked to run later)


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A finished job's outcome, stored under ``result:{id}`` with a TTL."""

    v: int
    task: str
    ok: bool
    value: msgspec.Raw = NIL  # msgpack of the return value
    error: ErrorInfo | None = None
    attempts: int = 0
    cancelled: bool = False
    finished: float = 0.0


class Progress(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A running job's progress, as its task last reported it.

    :ivar fraction: how far along, 0 to 1 (None: not said).
    :ivar message: what it is doing, in words.
    :ivar state: a checkpoint of plain data (numbers, strings, bytes, lists, dicts): a retried
        or snoozed job finds it in :attr:`aioqueue.JobContext.progress` and can resume from it.
    :ivar attempt: the attempt that reported it.
    :ivar at: when, by the worker's wall clock (``time.time()``).
    """

    fraction: float | None = None
    message: str = ""
    state: Any = None
    attempt: int = 0
    at: float = 0.0


class ChildJob(msgspec.Struct, frozen=True, array_like=True):
    """What the supervisor sends a child for one job: the task's name and its raw arguments.

    Encoded as a msgpack array ``[task, args, kwargs, id, attempt, progress]``; ``args`` (an
    array) and ``kwargs`` (a map) are the envelope's bytes as they were submitted, decoded only
    in the child; ``progress`` is the job's last :class:`Progress` as stored (nil if none).
    """

    task: str
    args: msgspec.Raw = EMPTY_ARGS
    kwargs: msgspec.Raw = EMPTY_KWARGS
    id: str = ""
    attempt: int = 1
    progress: msgspec.Raw = NIL


class ChildReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a child sends back for one job."""

    ok: bool
    value: msgspec.Raw = NIL
    error: ErrorInfo | None = None
    delay: float | None = None  # seconds, when the task asked for a retry or a snooze


_TYPES: dict[type, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {}


def register_type(cls: type[T], *, encode: Callable[[T], Any], decode: Callable[[Any], T]) -> None:
    """Teach aioqueue a type msgpack can't carry, for arguments and results alike.

    ``encode`` turns a value into something msgpack can carry (bytes, numbers, strings, lists,
    dicts); ``decode`` turns that back into the type. A task's argument or return value
    annotated with the type (``def f(a: numpy.ndarray) -> numpy.ndarray``) arrives as the type;
    where it is annotated ``Any`` or not at all, the encoded form arrives. Register at import
    time of the module that defines the tasks, so that producers, workers and their children
    all know it. Subclasses use their closest registered base's functions.
    """
    _TYPES[cls] = (encode, decode)


def _enc_hook(obj: Any) -> Any:
    for cls in type(obj).__mro__:
        codec = _TYPES.get(cls)
        if codec is not None:
            return codec[0](obj)
    raise TypeError(
        f"encoding objects of type {type(obj).__qualname__} is unsupported: teach it to "
        f"aioqueue with aioqueue.register_type({type(obj).__qualname__}, encode=..., decode=...)"
    )


def dec_hook(cls: type, obj: Any) -> Any:
    """msgspec's hook for registered types (see :func:`register_type`)."""
    if isinstance(obj, cls):  # converting a value that is the type already
        return obj
    codec = _TYPES.get(cls)
    if codec is None:
        raise NotImplementedError
    return codec[1](obj)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_envelope = msgspec.msgpack.Decoder(Envelope)
_outcome = msgspec.msgpack.Decoder(Outcome)
_error = msgspec.msgpack.Decoder(ErrorInfo)
_child_reply = msgspec.msgpack.Decoder(ChildReply)
_progress = msgspec.msgpack.Decoder(Progress)

encode = _encoder.encode


def decode_envelope(data: bytes) -> Envelope:
    """Decode an envelope, arguments left raw.

    :raises msgspec.DecodeError: if the bytes are not a valid envelope of this version.
    """
    try:
        env = _envelope.decode(data)
    except msgspec.DecodeError:
        raise
    except Exception as exc:  # e.g. invalid UTF-8 in a string: still just malformed data
        raise msgspec.DecodeError(f"{type(exc).__name__}: {exc}") from None
    if env.v != WIRE_VERSION:
        raise msgspec.DecodeError(f"unsupported wire version {env.v} (expected {WIRE_VERSION})")
    return env


def decode_child_reply(data: bytes) -> ChildReply:
    """Decode a child's reply."""
    return _child_reply.decode(data)


def decode_outcome(data: bytes) -> Outcome:
    """Decode a stored outcome."""
    return _outcome.decode(data)


def decode_progress(data: bytes) -> Progress:
    """Decode a stored progress report.

    :raises msgspec.DecodeError: if the bytes are not one.
    """
    return _progress.decode(data)


def decode_errors(data: bytes) -> list[ErrorInfo]:
    """Decode the length-prefixed error records the finish script appends, one per attempt."""
    out: list[ErrorInfo] = []
    pos = 0
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        pos += 4
        try:
            out.append(_error.decode(data[pos : pos + size]))
        except msgspec.DecodeError:
            out.append(ErrorInfo(type="DecodeError", message="unreadable error record"))
        pos += size
    return out
