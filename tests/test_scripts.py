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


async def test_composed_finish_claim_runs_both_in_order(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """finish_claim records one job's outcome, then claims the next, in one script call."""
    k = queue.keys
    claim_keys = [k.pending, k.scheduled, k.priority, k.jobs, k.attempts, k.tokens, k.leases,
                  k.wake, k.stats]  # fmt: skip
    first = await queue.submit(tasks.noop)
    second = await queue.submit(tasks.noop)
    reply = await queue.scripts.call("claim", claim_keys, [1, 1000, "w:", 0])
    assert reply[2].decode() == first.id
    finish_keys = [k.jobs, k.attempts, k.tokens, k.leases, k.priority, k.pending, k.scheduled,
                   k.dead, k.errors, k.wake, k.stats, k.result(first.id), k.jobs]  # fmt: skip
    outcome = wire.encode(wire.Outcome(v=1, task="tests.tasks.noop", ok=True))
    finish_args = [k.done_channel, first.id, "w:0", "ok", outcome, b"", 0, 60000, "0", "0"]
    finished, claimed = await queue.scripts.call_pair(
        "finish_claim", (finish_keys, finish_args), (claim_keys, [1, 1000, "w:", 1])
    )
    assert finished == [1]
    assert claimed[2].decode() == second.id and claimed[3] == b"w:1"
    assert await first.result(timeout=5) is None


@pytest.mark.parametrize("kind", ["ok", "retry", "dead"])
async def test_finish_retried_after_lost_reply_is_not_fenced(
    queue: Queue, sync_redis: redis.Redis, kind: str
) -> None:
    """A finish call re-sent after its reply was lost reports success again and counts no
    fencing; a different outcome with the same stale token is fenced."""
    k = queue.keys
    claim_keys = [k.pending, k.scheduled, k.priority, k.jobs, k.attempts, k.tokens, k.leases,
                  k.wake, k.stats]  # fmt: skip
    job = await queue.submit(tasks.noop)
    await queue.scripts.call("claim", claim_keys, [1, 10_000, "w:", 0])
    keys = [k.jobs, k.attempts, k.tokens, k.leases, k.priority, k.pending, k.scheduled, k.dead,
            k.errors, k.wake, k.stats, k.result(job.id), k.jobs]  # fmt: skip
    args = [k.done_channel, job.id, "w:0", kind, b"outcome-1", b"error-1", 0, 60_000, "0", "0"]
    assert await queue.scripts.call("finish", keys, args) == [1]
    assert await queue.scripts.call("finish", keys, args) == [1]
    assert sync_redis.hget(k.stats, "fenced") is None
    other = [*args[:4], b"outcome-2", b"error-2", *args[6:]]
    assert await queue.scripts.call("finish", keys, other) == [0]
    assert sync_redis.hget(k.stats, "fenced") == b"1"
