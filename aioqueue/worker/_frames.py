"""The pipe protocol between a supervisor and its children: length-prefixed frames.

Each frame is a 4-byte big-endian length and that many bytes. A child's first frame says
whether it could import its tasks: :data:`READY`, or :data:`START_FAILED` followed by the
formatted traceback (UTF-8), after which it exits. Then the supervisor sends one
:class:`~aioqueue.wire.ChildJob` at a time and the child answers each with one
:class:`~aioqueue.wire.ChildReply`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

HEADER = struct.Struct(">I")  # frame length, big-endian
READY = b"ready"  # a child's first frame, once it has imported the tasks
START_FAILED = b"start-failed\n"  # a child's first frame instead, then its traceback

_encoder = msgspec.msgpack.Encoder()


def frame(obj: Any) -> bytearray:
    """``obj`` as msgpack, framed: header and body in one buffer, for one write."""
    buf = bytearray(HEADER.size)
    _encoder.encode_into(obj, buf, HEADER.size)
    HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
    return buf


def frame_bytes(data: bytes) -> bytes:
    """``data`` framed as is."""
    return HEADER.pack(len(data)) + data
