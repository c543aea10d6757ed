"""Rate limits: at most ``count`` jobs of a key start in any period, across all workers; a job
over the rate goes back to scheduled for its moment, unleased and its attempt uncounted."""

from __future__ import annotations

import pytest
import redis

from aioqueue import InvalidOptions, Queue
from aioqueue.scripts import Receipt
from tests import tasks
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio


async def test_a_claim_over_the_rate_reschedules_the_rest(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """Two per second: of five claimed at once, two are leased and three scheduled half a
    second apart after the burst, none with an attempt counted."""
    k = queue.keys
    api = queue.options(rate=(2, 1.0), rate_key="partner-api")
    jobs = [await api.submit(tasks.noop) for _ in range(5)]
    _, claim = await queue.scripts.claim(5, 60_000, "w", Receipt(k.receipt("c"), "1", 60_000))
    assert [j.id for j in claim.jobs] == [j.id for j in jobs[:2]]
    due = [int(s) for _, s in sync_redis.zrange(k.scheduled, 0, -1, withscores=True)]
    assert len(due) == 3 and 0 < claim.next_due_ms <= 500
    assert [b - a for a, b in zip(due, due[1:], strict=False)] == [500, 500]
    assert sync_redis.hlen(k.attempts) == 2
    with pytest.raises(InvalidOptions, match=r"rate must be \(count >= 1, seconds > 0\)"):
        queue.options(rate=(0, 1.0))


async def test_a_task_rate_holds_across_workers(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """Twelve jobs of a task limited to 4 per 0.4 s through two workers: all complete, and no
    sooner than the rate allows (8 beyond the first burst, 0.1 s apart)."""
    start = sync_redis.time()
    jobs = await queue.submit_many(tasks.paced, [()] * 12)
    await start_worker(processes=2)
    await start_worker(processes=2)
    for job in jobs:
        await job.result(timeout=30)
    end = sync_redis.time()
    elapsed = (end[0] - start[0]) + (end[1] - start[1]) / 1e6
    assert elapsed >= 0.8 - 0.01
