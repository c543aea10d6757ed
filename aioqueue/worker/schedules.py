"""The schedule loop: fires the queue's periodic jobs at their ticks (see :mod:`aioqueue.schedule`).

Every worker serving a queue runs it; the tick script lets one submit per tick through, so
workers need not agree on who fires. Between ticks the loop sleeps until the next one (no
polling). Each pass also writes each schedule's next tick and what it runs into the queue's
``schedules`` hash, for ``aioqueue info``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from .._redis import to_str
from ..options import NO_OPTIONS
from ..schedule import Schedule
from ..scripts import NewJob
from .backoff import Backoff

if TYPE_CHECKING:
    from ..queue import Queue
    from .supervisor import Worker

__all__ = ("fire_due", "schedule_loop")

log = logging.getLogger("aioqueue.worker")


async def schedule_loop(w: Worker) -> None:
    """Fire due ticks, then sleep until the next one; after a failure, back off and retry."""
    schedules = list(w.queue.schedules.values())
    if not schedules:
        return
    backoff = Backoff(cap=5.0)
    while True:
        try:
            wait_ms = await fire_due(w.queue, schedules)
        except Exception as exc:
            w.outage.failed("firing schedules", exc)
            await backoff.sleep()
            continue
        backoff.reset()
        await anyio.sleep(max(wait_ms, 1) / 1000)


async def fire_due(q: Queue, schedules: Sequence[Schedule]) -> int:
    """Fire every tick due now (by Redis's clock), record the next ones; ms until the next."""
    k = q.keys
    sec, usec = await q.redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    raw = await q.redis.hgetall(k.schedules)
    fired = {name: int(v) for f, v in raw.items() if ":" not in (name := to_str(f))}
    about: list[str | int] = []  # field, value, ...
    soonest: int | None = None
    for s in schedules:
        last = fired.get(s.name)
        ticks, mark = s.plan(last, now_ms)
        for tick in ticks:
            td = q.tasks.get(s.task)
            p = q._prepare(s.task, td, s.args, s.kwargs, NO_OPTIONS)
            job = NewJob(p.id, p.data, p.priority, p.delay_ms)
            if await q.scripts.tick(s.name, tick, job):
                log.info("schedule %s: tick %d submitted job %s (%s)", s.name, tick, p.id, s.task)
        if mark is not None:
            await q.scripts.tick(s.name, mark, None)
        nxt = s.after(max(now_ms, last or 0, *ticks, mark or 0))
        about += [f"{s.name}:next", nxt, f"{s.name}:about", f"{s.task}; {s.describe()}"]
        soonest = nxt if soonest is None else min(soonest, nxt)
    await q.redis.hset(k.schedules, items=about)
    assert soonest is not None
    return soonest - now_ms
