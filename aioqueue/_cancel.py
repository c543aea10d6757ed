"""Cancelling jobs: waiting ones withdrawn, running ones stopped by their workers, by id or by
task name and de-duplication key."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from . import wire
from ._redis import call_redis, to_str
from .errors import JobNotFound

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ("cancel_jobs", "envelopes", "matching")

SCAN_COUNT = 1000  # envelopes read per HSCAN step


async def cancel_jobs(q: Queue, job_ids: Sequence[str], wait: float) -> list[bool]:
    """See :meth:`Queue.cancel`."""
    if not job_ids:
        return []
    jobs: list[tuple[str, bytes, str | None, str | None]] = []
    for job_id, env in zip(job_ids, await envelopes(q, job_ids), strict=True):
        outcome = wire.Outcome(
            v=wire.WIRE_VERSION, task=env.task if env else "", ok=False, cancelled=True,
            finished=time.time(),
        )  # fmt: skip
        jobs.append((job_id, wire.encode(outcome), env.key if env else None,
                     env.group if env else None))  # fmt: skip
    replies = await q.scripts.cancel(jobs, int(q.result_ttl * 1000))
    stopping = [i for i, r in zip(job_ids, replies, strict=True) if r == 2]
    stopped = dict(zip(stopping, await _stopped(q, stopping, wait), strict=True))
    return [r == 1 or stopped.get(i, False) for i, r in zip(job_ids, replies, strict=True)]


async def matching(q: Queue, task: str | None, key: str | None) -> list[str]:
    """The ids of the unfinished jobs of ``task`` with de-duplication ``key`` (None: any)."""
    ids: list[str] = []
    cursor = 0
    while True:
        cursor, page = await call_redis(
            q.redis.hscan(q.keys.jobs, cursor, count=SCAN_COUNT), q.redis_url
        )
        for job_id, data in page.items():
            try:
                env = wire.decode_envelope(data)
            except msgspec.DecodeError:
                continue
            if (task is None or env.task == task) and (key is None or env.key == key):
                ids.append(to_str(job_id))
        if not cursor:
            return ids


async def _stopped(q: Queue, job_ids: list[str], wait: float) -> list[bool]:
    """Per running job asked to stop: False if it finished otherwise, else True."""

    async def one(job_id: str) -> bool:
        try:
            async with asyncio.timeout(wait):
                data = await q._results.wait(job_id)
        except TimeoutError:
            return True
        except JobNotFound:  # finished, and its result gone already
            return False
        return wire.decode_outcome(data).cancelled

    return list(await asyncio.gather(*(one(i) for i in job_ids)))


async def envelopes(q: Queue, job_ids: Sequence[str]) -> list[wire.Envelope | None]:
    """The jobs' envelopes (None for an unknown id or undecodable bytes)."""
    raw = await call_redis(q.redis.hmget(q.keys.jobs, list(job_ids)), q.redis_url)
    out: list[wire.Envelope | None] = []
    for data in raw:
        env = None
        if data is not None:
            with contextlib.suppress(msgspec.DecodeError):
                env = wire.decode_envelope(data)
        out.append(env)
    return out
