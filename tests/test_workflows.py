"""Jobs that run after others: chains (a result feeds the next job), groups with a callback
(the results of all), and dependents cancelled with the reason when a parent fails."""

from __future__ import annotations

import pytest
import redis

import aioqueue
from aioqueue import Queue
from tests import tasks
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio


async def test_a_chain_feeds_each_result_to_the_next_job(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """b waits in Redis (counted as waiting, not pending) until a finishes; it runs with a's
    result first, and c with b's; a job after one that finished already runs at once."""
    a = await queue.options(delay=0.3).submit(tasks.add, 1, 2)
    b = await queue.options(after=a).submit(tasks.add, 10)
    c = await queue.options(after=b.id).submit(tasks.add, 100)
    assert sync_redis.hget(queue.keys.blocked, b.id) == b"1"
    info = await queue.info()
    assert (info.pending, info.scheduled, info.waiting) == (0, 1, 2)
    assert await b.status() == "pending"  # waiting to run, as far as its status says
    await start_worker()
    assert await c.result(timeout=20) == 113
    assert await b.result(timeout=5) == 13
    late = await queue.options(after=a).submit(tasks.add, -3)
    assert await late.result(timeout=20) == 0
    assert sync_redis.hlen(queue.keys.blocked) == 0 and not sync_redis.exists(
        queue.keys.after(a.id)
    )


async def test_a_group_callback_gets_every_result_in_order(
    queue: Queue, start_worker: StartWorker
) -> None:
    await start_worker()
    parts = [await queue.submit(tasks.add, i, i) for i in range(4)]
    done = await queue.options(after=parts).submit(tasks.echo)
    assert await done.result(timeout=20) == [0, 2, 4, 6]


async def test_dependents_of_a_failed_job_are_cancelled_with_the_reason(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A parent dead-lettered: its dependent is recorded cancelled, naming it; the dependent's
    own dependent is cancelled in turn; a blocked job can be cancelled before it runs."""
    bad = await queue.options(retries=0).submit(tasks.fail, "nope")
    child = await queue.options(after=bad).submit(tasks.add, 1)
    grandchild = await queue.options(after=child).submit(tasks.add, 2)
    parent = await queue.options(delay=600).submit(tasks.noop)
    held = await queue.options(after=parent).submit(tasks.echo)
    with pytest.raises(aioqueue.ArgumentError, match="too many positional arguments"):
        await queue.options(after=parent).submit(tasks.noop)  # its result has nowhere to go
    assert await held.cancel() is True and await held.status() == "cancelled"
    await start_worker()
    with pytest.raises(aioqueue.JobCancelled, match=f"job {bad.id} .*which it runs after, fail"):
        await child.result(timeout=20)
    with pytest.raises(aioqueue.JobCancelled, match=f"job {child.id} .*was cancelled"):
        await grandchild.result(timeout=20)
    with pytest.raises(aioqueue.InvalidOptions, match="after must name at most"):
        queue.options(after=[""])
