"""The Lua scripts driven directly on real Redis, through their typed methods.

Several tests re-send a call exactly as redis-py does when a reply is lost after Redis applied
the command: the same keys and arguments, the same receipt.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis

from aioqueue import Queue, wire
from aioqueue.scripts import FinishItem, InfoReply, Receipt, Scripts
from tests import tasks
from tests._async import eventually

pytestmark = pytest.mark.anyio

DEAD = (60_000, 1000)  # dead-letter retention: ms, count


@pytest.fixture
async def scripts(queue: Queue) -> AsyncIterator[Scripts]:
    yield Scripts(queue.redis, queue.keys, queue.redis_url)


def receipt(queue: Queue, name: str, call: int | str = 1) -> Receipt:
    return Receipt(queue.keys.receipt(name), str(call), 60_000)


def outcome(ok: bool = True) -> bytes:
    return wire.encode(wire.Outcome(v=1, task="tests.tasks.noop", ok=ok, finished=time.time()))


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
    names += [k.result("x"), k.dedup("y"), k.receipt("z")]
    assert all(n.startswith("aioqueue:{tests}:") for n in names)


async def test_claim_leases_atomically_and_heartbeat_reports_loss(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """A claimed job has a lease and a token at once; a heartbeat with a wrong token reports
    the job lost and leaves the lease alone."""
    job = await queue.submit(tasks.noop)
    k = queue.keys
    _, claim = await scripts.claim(5, 1000, "w1", receipt(queue, "c", 7))
    assert claim.next_due_ms == -1 and claim.stale == 0
    [leased] = claim.jobs
    assert (leased.id, leased.token, leased.attempts) == (job.id, "w1:7", 1)
    assert wire.decode_envelope(leased.data).task == "tests.tasks.noop"
    assert sync_redis.zscore(k.leases, job.id) is not None
    assert sync_redis.zcard(k.pending) == 0
    lost, stop = await scripts.heartbeat(
        "w1", 1000, [(job.id, "w1:7"), ("gone", "t")], receipt(queue, "b")
    )
    assert (lost, stop) == (["gone"], [])
    lost, _ = await scripts.heartbeat("w2", 1000, [(job.id, "w2:9")], receipt(queue, "b", 2))
    assert lost == [job.id]
    assert await scripts.cancel([(job.id, b"cancelled", None)], 60_000) == [2]  # running
    lost, stop = await scripts.heartbeat("w1", 1000, [(job.id, "w1:7")], receipt(queue, "b", 3))
    assert (lost, stop) == ([], [job.id])  # its holder is asked to stop it


async def test_claim_never_starts_a_job_twice(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """A stale copy of a leased or finished job in pending is skipped and counted."""
    job = await queue.submit(tasks.noop)
    k = queue.keys
    await scripts.claim(1, 1000, "w1", receipt(queue, "c1"))
    sync_redis.zadd(k.pending, {job.id: 0})
    _, claim = await scripts.claim(1, 1000, "w2", receipt(queue, "c2"))
    assert claim.stale == 1 and claim.jobs == []
    assert sync_redis.hget(k.tokens, job.id) == b"w1:1"


async def test_resent_claim_gets_its_first_jobs_not_others(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """A claim re-sent after a lost reply returns the jobs it leased the first time and pops
    nothing more; only a new call (a new receipt) claims the next ones."""
    jobs = await queue.submit_many(tasks.noop, [() for _ in range(4)])
    r = receipt(queue, "w:fetch", 10)
    _, first = await scripts.claim(2, 10_000, "w", r)
    _, again = await scripts.claim(2, 10_000, "w", r)
    assert [j.id for j in again.jobs] == [j.id for j in first.jobs] == [j.id for j in jobs[:2]]
    assert [j.token for j in again.jobs] == ["w:10", "w:11"]
    assert [j.attempts for j in again.jobs] == [1, 1]
    assert sync_redis.zcard(queue.keys.pending) == 2
    _, nxt = await scripts.claim(2, 10_000, "w", receipt(queue, "w:fetch", 12))
    assert [j.id for j in nxt.jobs] == [j.id for j in jobs[2:]]


async def test_composed_finish_claim_runs_both_in_order(queue: Queue, scripts: Scripts) -> None:
    """One call records one job's outcome, then claims the next; re-sent, it answers the same."""
    first = await queue.submit(tasks.noop)
    second = await queue.submit(tasks.noop)
    _, c1 = await scripts.claim(1, 1000, "w", receipt(queue, "f", 0))
    assert c1.jobs[0].id == first.id
    ok = FinishItem(first.id, "w:0", "ok", result=outcome(), ttl_ms=60_000)
    r = receipt(queue, "f", 1)
    finished, c2 = await scripts.claim(1, 1000, "w", r, [ok], DEAD)
    assert finished == [1]
    assert c2.jobs[0].id == second.id and c2.jobs[0].token == "w:1"
    assert await scripts.claim(1, 1000, "w", r, [ok], DEAD) == (finished, c2)
    assert await first.result(timeout=5) is None


async def test_finish_claim_of_several_outcomes_gives_the_claim_its_own_arguments(
    queue: Queue, scripts: Scripts
) -> None:
    """The claim's KEYS and ARGV follow the finish's, however many outcomes come first."""
    jobs = [await queue.submit(tasks.noop) for _ in range(5)]
    _, c1 = await scripts.claim(3, 1000, "w", receipt(queue, "f", 0))
    assert [j.id for j in c1.jobs] == [j.id for j in jobs[:3]]
    done = [FinishItem(j.id, j.token, "ok", result=outcome(), ttl_ms=60_000) for j in c1.jobs]
    finished, c2 = await scripts.claim(2, 1000, "w", receipt(queue, "f", 3), done, DEAD)
    assert finished == [1, 1, 1]
    assert [(j.id, j.token) for j in c2.jobs] == [(jobs[3].id, "w:3"), (jobs[4].id, "w:4")]
    assert (c2.next_due_ms, c2.stale, c2.paused) == (-1, 0, False)
    for job in jobs[:3]:
        assert await job.result(timeout=5) is None


async def test_a_claim_promotes_due_jobs_and_says_when_the_next_is_due(
    queue: Queue, scripts: Scripts
) -> None:
    """Scheduled jobs: one not due yet stays, and the claim says in how many ms it will be; a
    due one is claimed by the same call that promotes it."""
    due = await queue.options(delay=20).submit(tasks.noop)
    later = await queue.options(delay=30).submit(tasks.noop)
    _, early = await scripts.claim(5, 1000, "w", receipt(queue, "f", 0))
    assert early.jobs == [] and 19_000 < early.next_due_ms <= 20_000
    await queue.redis.zadd(queue.keys.scheduled, {due.id: 1})  # its time has come
    _, claim = await scripts.claim(5, 1000, "w", receipt(queue, "f", 5))
    assert [j.id for j in claim.jobs] == [due.id]
    assert 29_000 < claim.next_due_ms <= 30_000
    assert await queue.redis.zscore(queue.keys.scheduled, later.id) is not None


@pytest.mark.parametrize("kind", ["ok", "retry", "dead", "release"])
async def test_finish_resent_after_lost_reply_is_not_fenced(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis, kind: str
) -> None:
    """A finish re-sent after its reply was lost answers as the first time, counts nothing
    twice and no fencing; a different outcome under the stale token is fenced."""
    k = queue.keys
    job = await queue.submit(tasks.noop)
    await scripts.claim(1, 10_000, "w", receipt(queue, "c", 0))
    item = FinishItem(job.id, "w:0", kind, result=outcome(), error=b"error-1", ttl_ms=60_000)  # type: ignore[arg-type]
    r = receipt(queue, "w:finish")
    assert await scripts.finish([item], r, DEAD) == [1]
    assert await scripts.finish([item], r, DEAD) == [1]
    counter = {"ok": "completed", "retry": "retried", "dead": "dead", "release": "released"}[kind]
    assert sync_redis.hget(k.stats, counter) == b"1"
    assert sync_redis.hget(k.stats, "fenced") is None
    if kind != "release":  # an outcome re-sent after its receipt expired is still recognised
        assert await scripts.finish([item], receipt(queue, "w:finish", 2), DEAD) == [1]
        assert sync_redis.hget(k.stats, "fenced") is None
    other = FinishItem(job.id, "w:0", "ok", result=outcome(), ttl_ms=60_000)
    assert await scripts.finish([other], receipt(queue, "w:finish", 3), DEAD) == [0]
    assert sync_redis.hget(k.stats, "fenced") == b"1"


async def test_two_reapers_of_one_lease_count_one_recovery(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """Two workers recovering the same expired lease: one applies it, the other is told there
    is nothing left to recover; neither counts fencing, and Redis counts one recovery."""
    job = await queue.submit(tasks.noop)
    await scripts.claim(1, 1, "gone", receipt(queue, "c"))
    deadline = time.monotonic() + 5
    while not (rows := await scripts.expired(10, DEAD)):
        assert time.monotonic() < deadline, "the 1 ms lease never expired"
    [row] = rows
    assert row.id == job.id and row.holder_alive is False
    item = FinishItem(row.id, row.token, "retry", error=b"lost", reaping=True)
    assert await scripts.finish([item], receipt(queue, "a:reap"), DEAD) == [1]
    assert await scripts.finish([item], receipt(queue, "b:reap"), DEAD) == [-2]
    stats = sync_redis.hgetall(queue.keys.stats)
    assert stats[b"recovered"] == b"1" and b"fenced" not in stats


async def test_expired_lease_says_whether_its_holder_still_heartbeats(
    queue: Queue, scripts: Scripts
) -> None:
    """Recovery can tell a lease that expired under a live worker from a dead worker's."""
    await queue.submit(tasks.noop)
    await scripts.heartbeat("alive", 60_000, [], receipt(queue, "beat"))
    await scripts.claim(1, 1, "alive", receipt(queue, "c"))
    deadline = time.monotonic() + 5
    while not (rows := await scripts.expired(10, DEAD)):
        assert time.monotonic() < deadline
    assert rows[0].holder_alive is True


async def test_resent_cancel_requeue_and_purge_answer_as_the_first_time(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """cancel, requeue and purge re-sent with their receipt report what the first call did."""
    k = queue.keys
    job = await queue.options(delay=60).submit(tasks.noop)
    r = receipt(queue, "p1")
    cancelled = wire.encode(wire.Outcome(v=1, task="tests.tasks.noop", ok=False, cancelled=True))
    assert await scripts._run(
        "cancel", *scripts.cancel_call([(job.id, cancelled, None)], 60_000), r
    ) == [1]
    assert await scripts._run(
        "cancel", *scripts.cancel_call([(job.id, cancelled, None)], 60_000), r
    ) == [1]
    assert sync_redis.hget(k.stats, "cancelled") == b"1"
    assert await scripts.cancel([(job.id, cancelled, None)], 60_000) == [1]  # a new call too
    assert sync_redis.hget(k.stats, "cancelled") == b"1"

    dead = await queue.submit(tasks.noop)
    await scripts.claim(1, 10_000, "w", receipt(queue, "c"))
    item = FinishItem(dead.id, "w:1", "dead", result=outcome(False), error=b"e", ttl_ms=60_000)
    await scripts.finish([item], receipt(queue, "f"), DEAD)
    r = receipt(queue, "p2")
    keys = [k.dead, k.attempts, k.errors, k.pending, k.priority, k.wake, k.jobs,
            k.result(dead.id), k.jobs]  # fmt: skip
    assert await scripts._run("requeue", keys, [dead.id, "0"], r) == [1]
    assert await scripts._run("requeue", keys, [dead.id, "0"], r) == [1]
    assert sync_redis.zscore(k.pending, dead.id) is not None

    await scripts.claim(1, 10_000, "w", receipt(queue, "c", 5))
    item = FinishItem(dead.id, "w:5", "dead", result=outcome(False), error=b"e", ttl_ms=60_000)
    await scripts.finish([item], receipt(queue, "f", 2), DEAD)
    r = receipt(queue, "p3")
    keys = [k.dead, k.jobs, k.attempts, k.errors, k.priority]
    assert await scripts._run("purge", keys, [dead.id], r) == 1
    assert await scripts._run("purge", keys, [dead.id], r) == 1
    assert not sync_redis.hexists(k.jobs, dead.id)


async def test_requeued_dead_letter_holds_its_dedup_key_again(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """Dead-lettering puts a TTL on the job's de-duplication key; requeueing it makes the key
    persistent again, so it can't expire while the requeued job waits or runs."""
    k = queue.keys
    job = await queue.options(key="once").submit(tasks.noop)
    await scripts.claim(1, 10_000, "w", receipt(queue, "c"))
    item = FinishItem(
        job.id, "w:1", "dead", result=outcome(False), error=b"e", ttl_ms=5_000, dedup="once"
    )
    await scripts.finish([item], receipt(queue, "f"), DEAD)
    assert 0 < sync_redis.pttl(k.dedup("once")) <= 5_000
    assert await scripts.requeue([(job.id, "once")]) == [True]
    assert sync_redis.pttl(k.dedup("once")) == -1
    assert sync_redis.get(k.dedup("once")) == job.id.encode()


async def test_dead_letters_are_kept_within_their_count_and_age(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """Dead letters past the count cap go, oldest first, with their job data; ones past their
    age go at the next recovery pass."""
    k = queue.keys
    jobs = await queue.submit_many(tasks.noop, [() for _ in range(5)])
    _, claim = await scripts.claim(5, 10_000, "w", receipt(queue, "c"))
    for i, leased in enumerate(claim.jobs):
        item = FinishItem(
            leased.id, leased.token, "dead", result=outcome(False), error=b"e", ttl_ms=60_000
        )
        await scripts.finish([item], receipt(queue, "f", i), (60_000, 3))
    kept = [m.decode() for m in sync_redis.zrange(k.dead, 0, -1)]
    assert kept == [j.id for j in jobs[2:]]
    assert not sync_redis.hexists(k.jobs, jobs[0].id) and not sync_redis.hexists(
        k.errors, jobs[0].id
    )
    assert await scripts.expired(10, (0, 1000)) == []
    assert sync_redis.zcard(k.dead) == 0 and sync_redis.hlen(k.jobs) == 0


async def test_dead_letters_and_info_are_one_round_trip_each(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """dead_letters and info each read everything they show in one script call."""
    job = await queue.submit(tasks.noop)
    await scripts.heartbeat("live", 60_000, [], receipt(queue, "b1"))
    await scripts.heartbeat("gone", 1, [], receipt(queue, "b2"))
    _, claim = await scripts.claim(1, 10_000, "live", receipt(queue, "c"))
    token = claim.jobs[0].token
    item = FinishItem(job.id, token, "dead", result=outcome(False), error=b"e", ttl_ms=60_000)
    await scripts.finish([item], receipt(queue, "f"), DEAD)
    [row] = await scripts.dead_letters(10)
    assert row.id == job.id and row.data is not None and row.errors is not None
    info = await scripts.info()
    assert (info.pending, info.running, info.dead) == (0, 0, 1)
    assert "live" in info.live_workers and info.counters["dead"] == 1
    # "gone" heartbeated with a 1 ms deadline: gone as soon as Redis's clock passes it
    info = await eventually(lambda: _gone(scripts), 5, "the 1 ms heartbeat to lapse")
    assert info.live_workers == ["live"] and info.gone_workers == ["gone"]  # type: ignore[attr-defined]
    # a minute past its deadline, the next heartbeat of anyone forgets it and what it said
    k = queue.keys
    assert sync_redis.hexists(k.worker_info, "gone")
    sync_redis.zadd(k.workers, {"gone": 1})
    await scripts.heartbeat("live", 60_000, [], receipt(queue, "b3"))
    assert sync_redis.zrange(k.workers, 0, -1) == [b"live"]
    assert sync_redis.hkeys(k.worker_info) == [b"live"]


async def _gone(scripts: Scripts) -> InfoReply | None:
    info = await scripts.info()
    return info if info.gone_workers else None


async def test_resent_submit_says_created(queue: Queue, scripts: Scripts) -> None:
    """A submit re-sent after a lost reply is told the job is its own (created), and adds
    nothing; a de-duplication hit on another job's key is not."""
    from aioqueue.scripts import NewJob

    new = NewJob("j1", b"env", key="k")
    assert await scripts.submit([new]) == [("j1", True)]
    assert await scripts.submit([new]) == [("j1", True)]
    assert await scripts.submit([NewJob("j2", b"env", key="k")]) == [("j1", False)]
    assert await queue.redis.zcard(queue.keys.pending) == 1


async def test_resent_pause_and_resume_answer_as_the_first_time(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """pause and resume re-sent with their receipt report what the first call did, and a
    re-sent resume pushes no second wake-up token."""
    k = queue.keys
    r = receipt(queue, "pause")
    assert await scripts._run("pause", [k.paused], [], r) == 1
    assert await scripts._run("pause", [k.paused], [], r) == 1
    assert await scripts.pause() is False  # a new call: already paused
    r = receipt(queue, "resume")
    assert await scripts._run("resume", [k.paused, k.wake], [], r) == 1
    assert await scripts._run("resume", [k.paused, k.wake], [], r) == 1
    assert sync_redis.llen(k.wake) == 1
    assert await scripts.resume() is False  # a new call: not paused


async def test_reaping_finish_resent_after_lost_reply_answers_as_the_first_time(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """Recovery's finish re-sent with its receipt answers 1 again (so the worker counts the one
    recovery Redis counted); a new call for the same lease is told there is nothing left."""
    await queue.submit(tasks.noop)
    await scripts.claim(1, 1, "gone", Receipt(queue.keys.receipt("c"), "1", 60_000))
    deadline = time.monotonic() + 5
    while not (rows := await scripts.expired(10, (60_000, 1000))):
        assert time.monotonic() < deadline, "the 1 ms lease never expired"
    [row] = rows
    item = FinishItem(row.id, row.token, "retry", error=b"lost", reaping=True)
    r = Receipt(queue.keys.receipt("w:reap"), "1", 60_000)
    assert await scripts.finish([item], r, (60_000, 1000)) == [1]
    assert await scripts.finish([item], r, (60_000, 1000)) == [1]  # re-sent: the first answer
    stats = sync_redis.hgetall(queue.keys.stats)
    assert stats[b"recovered"] == b"1" and b"fenced" not in stats
    r2 = Receipt(queue.keys.receipt("w:reap"), "2", 60_000)
    assert await scripts.finish([item], r2, (60_000, 1000)) == [-2]  # a new call
    assert sync_redis.hgetall(queue.keys.stats) == stats
