"""Rate limits: at most ``count`` jobs of a key start in any period, across all workers; a job
over the rate goes back to scheduled for its moment, unleased and its attempt uncounted. And
debounce: one run per burst of submits with a key, with the last arguments."""

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
    await start_worker()
    await start_worker()
    for job in jobs:
        await job.result(timeout=30)
    end = sync_redis.time()
    elapsed = (end[0] - start[0]) + (end[1] - start[1]) / 1e6
    assert elapsed >= 0.8 - 0.01


async def test_debounce_runs_once_per_burst_with_the_last_arguments(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """Three debounced submits with one key before the job starts: one job, the last
    arguments, its start moved on each time; once it started, the next submit makes a new job
    that takes the key over."""
    import msgspec

    from aioqueue import wire
    from tests._async import eventually

    k = queue.keys
    burst = queue.options(key="reindex-42", debounce=0.2)
    jobs = [await burst.submit(tasks.add, i, i) for i in range(3)]
    assert [j.id for j in jobs] == [jobs[0].id] * 3
    assert [j.created for j in jobs] == [True, False, False]
    env = wire.decode_envelope(sync_redis.hget(k.jobs, jobs[0].id))
    assert msgspec.msgpack.decode(env.args) == [2, 2] and sync_redis.zcard(k.scheduled) == 1

    calls = iter(range(10, 10**6, 10))  # a new call each time: a re-sent one gets its reply

    async def claimed() -> bool:
        receipt = Receipt(k.receipt("c"), str(next(calls)), 60_000)
        _, c = await queue.scripts.claim(1, 60_000, "w", receipt)
        return bool(c.jobs)

    await eventually(claimed, 10, "the debounced job to be due and claimed")
    later = await burst.submit(tasks.add, 5, 5)
    assert later.id != jobs[0].id and later.created
    assert sync_redis.get(k.dedup("reindex-42")) == later.id.encode()
    with pytest.raises(InvalidOptions, match="debounce needs a key"):
        await queue.options(debounce=1).submit(tasks.add, 1, 1)
