"""A queue's ``max_pending`` bound: a submit beyond it waits until a claim makes room (woken by
the claim's message, not by polling), or raises QueueFull with ``block=False``; nothing beyond
the bound is written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

import aioqueue
from aioqueue import Queue
from aioqueue.scripts import Receipt
from tests._async import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
async def bounded(redis_url: str) -> AsyncIterator[Queue]:
    async with Queue("bounded", redis_url, max_pending=3) as q:
        yield q


async def test_beyond_the_bound_block_false_raises_and_writes_nothing(
    bounded: Queue, sync_redis: redis.Redis
) -> None:
    """Three fit; the fourth raises QueueFull naming the bound; of a batch of three, the one
    that fits is submitted and its handle comes with the error."""
    for _ in range(2):
        await bounded.submit("t.f")
    with pytest.raises(aioqueue.QueueFull) as caught:
        await bounded.options(block=False).submit_many("t.f", [(), (), ()])
    assert "holds 3 waiting jobs (its max_pending): 2 of 3 job(s) not submitted" in str(
        caught.value
    )
    [fit] = caught.value.jobs
    assert await fit.status() == "pending"
    with pytest.raises(aioqueue.QueueFull):
        await bounded.options(block=False, delay=60).submit("t.f")  # scheduled ones count too
    assert (await bounded.info()).pending == 3 and sync_redis.hlen(bounded.keys.jobs) == 3


async def test_a_blocked_submit_goes_in_when_a_claim_makes_room(
    bounded: Queue, sync_redis: redis.Redis
) -> None:
    """The fourth submit waits; a claim of one job says there is room, and it goes in once."""
    for _ in range(3):
        await bounded.submit("t.f")
    waiting = asyncio.create_task(bounded.submit("t.f"))
    await eventually(lambda: sync_redis.exists(bounded.keys.full), 10, "the refused submit")
    assert not waiting.done()
    _, claim = await bounded.scripts.claim(
        1, 60_000, "w", Receipt(bounded.keys.receipt("c"), "1", 60_000)
    )
    assert len(claim.jobs) == 1
    job = await asyncio.wait_for(waiting, 10)
    assert job.created and await job.status() == "pending"
    assert (await bounded.info()).pending == 3 and not sync_redis.exists(bounded.keys.full)
    with pytest.raises(aioqueue.InvalidOptions, match="max_pending must be an int >= 1"):
        Queue("bad", max_pending=0)
