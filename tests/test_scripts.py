"""The Lua scripts driven directly on real Redis."""

from __future__ import annotations

import pytest
import redis

from aioqueue import Queue, wire
from tests import tasks

pytestmark = pytest.mark.anyio


async def test_scripts_reload_after_script_flush(queue: Queue, sync_redis: redis.Redis) -> None:
    """After SCRIPT FLUSH (a restarted or failed-over Redis) every script loads itself again."""
    await queue.submit(tasks.noop)
    sync_redis.script_flush()
    job = await queue.submit(tasks.add, 1, 2)
    assert await job.status() == "pending"


async def test_every_key_shares_the_queue_hash_tag(queue: Queue) -> None:
    """All of a queue's keys hash to one cluster slot: the {name} tag."""
    k = queue.keys
    names = [getattr(k, a) for a in k.__slots__ if a != "prefix"]
    names += [k.result("x"), k.dedup("y")]
    assert all(n.startswith("aioqueue:{tests}:") for n in names)


async def test_claim_leases_atomically_and_heartbeat_reports_loss(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """A claimed job has a lease and a token at once; a heartbeat with a wrong token reports
    the job lost and leaves the lease alone."""
    job = await queue.submit(tasks.noop)
    k = queue.keys
    keys = [k.pending, k.scheduled, k.priority, k.jobs, k.attempts, k.tokens, k.leases, k.wake,
            k.stats]  # fmt: skip
    reply = await queue.scripts.call("claim", keys, [5, 1000, "w1:", 0])
    assert reply[0] == -1 and reply[1] == 0
    assert reply[2].decode() == job.id and reply[3] == b"w1:0" and reply[4] == 1
    assert wire.decode_envelope(reply[5]).task == "tests.tasks.noop"
    assert sync_redis.zscore(k.leases, job.id) is not None
    assert sync_redis.zcard(k.pending) == 0
    lost = await queue.scripts.call(
        "heartbeat", [k.leases, k.tokens, k.workers], ["w1", 1000, job.id, "w1:0", "gone", "t"]
    )
    assert lost == [b"gone"]
    lost = await queue.scripts.call(
        "heartbeat", [k.leases, k.tokens, k.workers], ["w2", 1000, job.id, "w2:9"]
    )
    assert lost == [job.id.encode()]


async def test_claim_never_starts_a_job_twice(queue: Queue, sync_redis: redis.Redis) -> None:
    """A stale copy of a leased or finished job in pending is skipped and counted."""
    job = await queue.submit(tasks.noop)
    k = queue.keys
    keys = [k.pending, k.scheduled, k.priority, k.jobs, k.attempts, k.tokens, k.leases, k.wake,
            k.stats]  # fmt: skip
    await queue.scripts.call("claim", keys, [1, 1000, "w1:", 0])
    sync_redis.zadd(k.pending, {job.id: 0})
    reply = await queue.scripts.call("claim", keys, [1, 1000, "w2:", 0])
    assert reply[1] == 1 and len(reply) == 2
    assert sync_redis.hget(k.tokens, job.id) == b"w1:0"
