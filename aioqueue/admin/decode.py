"""Stored bytes and times made readable: msgpack to JSON values, job ids to times, ages."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import msgspec

__all__ = ("age", "relative", "id_time", "iso", "jsonable", "msgpack_json", "worker_host_pid")


def jsonable(obj: Any) -> Any:
    """``obj`` (as msgpack decodes) as a JSON value: bytes become ``{"base64": ...}``, map keys
    strings, timestamps ISO 8601 text, extension types ``{"ext": code, "base64": ...}``."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(obj)).decode()}
    if isinstance(obj, list | tuple):
        return [jsonable(o) for o in obj]
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else repr(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    if isinstance(obj, msgspec.msgpack.Ext):
        return {"ext": obj.code, "base64": base64.b64encode(obj.data).decode()}
    return repr(obj)


def msgpack_json(data: bytes | msgspec.Raw) -> Any:
    """msgpack bytes as a JSON value; bytes that don't decode as ``{"undecodable": base64}``."""
    raw = bytes(data)
    try:
        return jsonable(msgspec.msgpack.decode(raw))
    except msgspec.DecodeError:
        return {"undecodable": base64.b64encode(raw).decode()}


def id_time(job_id: str) -> float | None:
    """When a job was created (epoch seconds), read from its id (its first 16 hex digits are
    the creation time in ns); None for an id of another shape."""
    try:
        return int(job_id[:16], 16) / 1e9 if len(job_id) >= 16 else None
    except ValueError:
        return None


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC text, to the millisecond."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def age(seconds: float | None) -> str:
    """A duration for people: ``850 ms``, ``12.5 s``, ``4.2 min``, ``3.1 h``, ``2.0 d``."""
    if seconds is None:
        return "-"
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 1:
        return f"{sign}{s * 1000:.0f} ms"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= size:
            return f"{sign}{s / size:.1f} {unit}"
    return f"{sign}{s:.1f} s"


def worker_host_pid(worker_id: str) -> tuple[str, int | None]:
    """A worker id's host and pid (ids are ``host-pid-random``; hosts may contain ``-``)."""
    parts = worker_id.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return worker_id, None


def relative(seconds: float) -> str:
    """An offset from now for people: ``in 4.8 s`` or ``3.9 s ago``."""
    return f"in {age(seconds)}" if seconds >= 0 else f"{age(-seconds)} ago"
