"""The wire format: round trips of every Struct, and decode errors for bytes that aren't one."""

from __future__ import annotations

import struct
from collections.abc import Callable

import msgspec
import pytest

from aioqueue import wire
from aioqueue.worker._frames import (
    HEADER,
    Done,
    Extend,
    Report,
    Run,
    Withdraw,
    Withdrawn,
    decode_reply,
    decode_request,
    frame,
)

ERROR = wire.ErrorInfo(
    type="ValueError", message="bad input", traceback="Traceback ...", attempt=2, kind="raised"
)


def _record(data: bytes) -> bytes:
    """One error record as the finish script appends it: a 4-byte big-endian length, the bytes."""
    return struct.pack(">I", len(data)) + data


def test_envelope_round_trip_keeps_arguments_raw() -> None:
    """An envelope decodes to an equal one, its arguments left as the raw bytes submitted."""
    env = wire.Envelope(
        v=wire.WIRE_VERSION,
        id="0123abcd",
        task="tasks.render",
        args=msgspec.Raw(wire.encode([1, "two", [3.0]])),
        kwargs=msgspec.Raw(wire.encode({"width": 10})),
        retries=3,
        timeout=1.5,
        priority=-2,
        key="report-42",
        result_ttl=60.0,
        submitted=1700000000.25,
    )
    back = wire.decode_envelope(wire.encode(env))
    assert back == env
    assert msgspec.msgpack.decode(back.args) == [1, "two", [3.0]]
    assert msgspec.msgpack.decode(back.kwargs) == {"width": 10}


def test_envelope_defaults_are_left_out_and_restored() -> None:
    """Fields at their defaults take no bytes and come back as the defaults."""
    env = wire.Envelope(v=wire.WIRE_VERSION, id="j", task="t")
    data = wire.encode(env)
    assert msgspec.msgpack.decode(data) == {"v": wire.WIRE_VERSION, "id": "j", "task": "t"}
    back = wire.decode_envelope(data)
    assert back == env
    assert bytes(back.args) == bytes(wire.EMPTY_ARGS) and bytes(back.kwargs) == b"\x80"
    assert (back.retries, back.timeout, back.key, back.priority) == (None, None, None, 0)


@pytest.mark.parametrize(
    "outcome",
    [
        wire.Outcome(v=1, task="t", ok=True, value=msgspec.Raw(wire.encode({"a": [1, 2]}))),
        wire.Outcome(v=1, task="t", ok=False, error=ERROR, attempts=3, finished=12.5),
        wire.Outcome(v=1, task="t", ok=False, cancelled=True),
    ],
    ids=["ok", "failed", "cancelled"],
)
def test_outcome_round_trip(outcome: wire.Outcome) -> None:
    """Completed, failed and cancelled outcomes decode to equal ones."""
    assert wire.decode_outcome(wire.encode(outcome)) == outcome


def test_outcome_value_defaults_to_nil() -> None:
    """An outcome without a value decodes with msgpack nil as its value."""
    back = wire.decode_outcome(wire.encode(wire.Outcome(v=1, task="t", ok=True)))
    assert msgspec.msgpack.decode(back.value) is None


@pytest.mark.parametrize(
    "reply",
    [
        wire.ChildReply(ok=True, value=msgspec.Raw(wire.encode(42))),
        wire.ChildReply(ok=False, error=ERROR),
    ],
    ids=["ok", "error"],
)
def test_child_reply_round_trip(reply: wire.ChildReply) -> None:
    """A child's reply decodes to an equal one."""
    assert wire.decode_child_reply(wire.encode(reply)) == reply


GARBAGE = [b"", b"\xc1", b"garbage", b"\x93\x01\x02\x03", b"\x81\xa1v", wire.encode({"v": 1})]


@pytest.mark.parametrize("data", GARBAGE)
@pytest.mark.parametrize(
    "decode", [wire.decode_envelope, wire.decode_outcome, wire.decode_child_reply]
)
def test_garbage_is_a_decode_error(decode: Callable[[bytes], object], data: bytes) -> None:
    """Bytes that aren't the Struct (empty, malformed, truncated, another shape, a field
    missing) raise msgspec.DecodeError, nothing else."""
    with pytest.raises(msgspec.DecodeError):
        decode(data)


def test_envelope_of_another_version_is_refused() -> None:
    """An envelope of a wire version this code does not know is a decode error naming it."""
    data = wire.encode(wire.Envelope(v=wire.WIRE_VERSION + 1, id="j", task="t"))
    with pytest.raises(msgspec.DecodeError, match=r"unsupported wire version 2 \(expected 1\)"):
        wire.decode_envelope(data)


def test_invalid_utf8_is_a_decode_error() -> None:
    """A string that is not UTF-8 makes the envelope and the outcome decode errors."""
    env = wire.encode(wire.Envelope(v=1, id="j", task="T"))
    out = wire.encode(wire.Outcome(v=1, task="T", ok=True))
    decoders: list[tuple[bytes, Callable[[bytes], object]]] = [
        (env, wire.decode_envelope),
        (out, wire.decode_outcome),
    ]
    for data, decode in decoders:
        broken = data.replace(b"\xa1T", b"\xa1\xff")
        assert broken != data
        with pytest.raises(msgspec.DecodeError, match="UTF-8"):
            decode(broken)


def test_error_records_decode_in_order() -> None:
    """The finish script's length-prefixed error records decode one per attempt, in order."""
    first = wire.ErrorInfo(type="KeyError", message="'x'", attempt=1)
    second = wire.ErrorInfo(type="TimeoutError", message="too slow", attempt=2, kind="timeout")
    data = _record(wire.encode(first)) + _record(wire.encode(second))
    assert wire.decode_errors(data) == [first, second]
    assert wire.decode_errors(b"") == []


def test_unreadable_error_record_keeps_its_place() -> None:
    """A record that is not an ErrorInfo becomes a placeholder; the records after it still
    decode."""
    good = wire.encode(ERROR)
    bad_utf8 = wire.encode(wire.ErrorInfo(type="E", message="m")).replace(b"\xa1E", b"\xa1\xff")
    data = _record(good) + _record(b"zzz") + _record(bad_utf8) + _record(good)
    out = wire.decode_errors(data)
    assert [e.type for e in out] == ["ValueError", "DecodeError", "DecodeError", "ValueError"]
    assert out[1].message == "unreadable error record"


def test_a_torn_length_prefix_at_the_end_is_ignored() -> None:
    """Fewer than four bytes after the last record can't hold a length: they are ignored."""
    data = _record(wire.encode(ERROR)) + b"\x00\x00"
    assert wire.decode_errors(data) == [ERROR]


def test_child_frames_round_trip_and_refuse_garbage() -> None:
    job = wire.ChildJob(
        "m.f", msgspec.Raw(wire.encode([1, "x"])), msgspec.Raw(wire.encode({"k": 2}))
    )
    for msg in (Run(7, job), Withdraw(7)):
        buf = bytes(frame(msg))
        (n,) = HEADER.unpack_from(buf)
        assert n == len(buf) - HEADER.size
        back = decode_request(buf[HEADER.size :])
        assert type(back) is type(msg) and back.seq == 7
        if isinstance(back, Run):
            assert back.job.task == "m.f"
            assert bytes(back.job.args) == bytes(job.args)
            assert bytes(back.job.kwargs) == bytes(job.kwargs)
    reply = wire.ChildReply(ok=True, value=msgspec.Raw(wire.encode(3)))
    for msg in (
        Done(7, 1.0, 2.0, reply),
        Withdrawn(7, True),
        Report(7, msgspec.Raw(wire.encode(wire.Progress(fraction=0.5)))),
        Extend(7, 2.5),
    ):
        assert decode_reply(bytes(frame(msg))[HEADER.size :]) == msg
    for garbage in (b"", b"\xc1", wire.encode([9, 1])):
        with pytest.raises(msgspec.DecodeError):
            decode_request(garbage)
        with pytest.raises(msgspec.DecodeError):
            decode_reply(garbage)
