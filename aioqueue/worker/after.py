"""Jobs that run after others: their parents' results become their first argument.

A job submitted with ``options(after=...)`` waits in Redis until every parent has finished (the
finish script releases it). When a worker claims it, the parents' outcomes are read in one
round trip: all succeeded, the job runs with the one parent's result (or, after several, the
list of their results, in the order given) before its own arguments; a parent that failed, was
dead-lettered or cancelled, or whose result expired, and the job is recorded cancelled with that
reason, so that its own dependents are released and cancelled in turn.
"""

from __future__ import annotations

import msgspec

from .. import wire
from .._redis import call_redis
from ..queue import Queue

__all__ = ("with_parents",)

_raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])


async def with_parents(q: Queue, env: wire.Envelope) -> msgspec.Raw | wire.ErrorInfo:
    """The job's arguments with its parents' results first, or why it must not run."""
    assert env.after
    found = await call_redis(q.redis.mget([q.keys.result(p) for p in env.after]), q.redis_url)
    values: list[msgspec.Raw] = []
    for parent, data in zip(env.after, found, strict=True):
        if data is None:
            return _why(f"the result of job {parent}, which it runs after, is gone (expired, "
                        f"or no such job)")  # fmt: skip
        outcome = wire.decode_outcome(data)
        if not outcome.ok:
            how = "was cancelled" if outcome.cancelled else "failed"
            return _why(f"job {parent} ({outcome.task}), which it runs after, {how}")
        values.append(outcome.value)
    first = values[0] if len(values) == 1 else msgspec.Raw(wire.encode(values))
    return msgspec.Raw(wire.encode([first, *_raw_list.decode(env.args)]))


def _why(message: str) -> wire.ErrorInfo:
    return wire.ErrorInfo(type="ParentFailed", message=message, kind="parent")
