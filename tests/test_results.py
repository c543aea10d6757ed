"""Waiting for outcomes: one shared subscription, batched fetches, resubscribing, the polling
fallback where subscribing is refused, and typed errors instead of hangs.

Outcomes are written here exactly as the finish script writes them (the ``result:<id>`` key,
then the ids on the queue's done channel), so no worker is needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
import redis.asyncio as aredis
from redis import exceptions as rex

import aioqueue
from aioqueue import Queue, wire
from aioqueue import results as results_module
from tests._async import eventually, not_redis

pytestmark = pytest.mark.anyio

GUARD = 10.0  # seconds after which a wait that should have ended counts as a hang


@pytest.fixture
async def ar(redis_url: str) -> AsyncIterator[aredis.Redis]:
    """An async client of the test's Redis, to drive outcomes the way the finish script does."""
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    q = Queue("results", redis_url)
    async with q:
        yield q


def outcome(value: Any = None, *, ok: bool = True) -> bytes:
    """A stored outcome, as the worker encodes it."""
    if ok:
        return wire.encode(
            wire.Outcome(v=1, task="t.f", ok=True, value=msgspec.Raw(wire.encode(value)))
        )
    error = wire.ErrorInfo(type="ValueError", message=str(value), attempt=1)
    return wire.encode(wire.Outcome(v=1, task="t.f", ok=False, error=error, attempts=1))


async def add_jobs(r: aredis.Redis, q: Queue, ids: Sequence[str]) -> None:
    """Make the jobs exist unfinished (as submitted)."""
    await r.hset(q.keys.jobs, mapping=dict.fromkeys(ids, b"envelope"))


async def finish(r: aredis.Redis, q: Queue, values: dict[str, Any], *, publish: bool = True) -> int:
    """Record outcomes as the finish script does; returns how many subscribers got the message."""
    for job_id, value in values.items():
        await r.set(q.keys.result(job_id), outcome(value), px=60_000)
        await r.hdel(q.keys.jobs, job_id)
    if not publish:
        return 0
    return int(await r.publish(q.keys.done_channel, " ".join(values)))


async def calls(r: aredis.Redis, command: str) -> int:
    """How often Redis has run ``command`` (all clients)."""
    stats = await r.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def subscribers(r: aredis.Redis, q: Queue) -> int:
    [(_, n)] = await r.pubsub_numsub(q.keys.done_channel)
    return int(n)


async def test_many_waiters_share_one_subscription(queue: Queue, ar: aredis.Redis) -> None:
    """Fifty waiters make one subscription, and one finish message for all of them costs one
    fetch round trip."""
    ids = [f"job-{i}" for i in range(50)]
    await add_jobs(ar, queue, ids)
    waits = [asyncio.create_task(queue.job(i).result(timeout=GUARD)) for i in ids]
    await eventually(lambda: queue._results.mode == "subscribed", what="subscription")
    assert await subscribers(ar, queue) == 1
    assert len(await ar.client_list(_type="pubsub")) == 1
    await eventually(lambda: not queue._results._checks, what="first checks done")
    before = await calls(ar, "mget")
    assert await finish(ar, queue, {i: n for n, i in enumerate(ids)}) == 1
    assert await asyncio.gather(*waits) == list(range(50))
    assert await calls(ar, "mget") - before == 1


async def test_result_that_arrived_before_the_wait_is_found(queue: Queue, ar: aredis.Redis) -> None:
    """An outcome stored before anyone waits is found, whether the finish message came before
    the subscription or while it was live."""
    await add_jobs(ar, queue, ["early"])
    await finish(ar, queue, {"early": "was there"})
    assert await queue.job("early").result(timeout=GUARD) == "was there"
    assert queue._results.mode == "subscribed"
    job = await queue.submit("t.f")  # handle made while the subscription is live
    assert job._epoch is not None
    assert await finish(ar, queue, {job.id: 7}) == 1
    await eventually(lambda: job.id in queue._results._recent, what="finish message seen")
    assert await job.result(timeout=GUARD) == 7
    assert await job.result(timeout=GUARD) == 7  # and again


async def test_unknown_job_raises_job_not_found(queue: Queue) -> None:
    """Waiting for an id the queue never had raises JobNotFound, before and after the
    subscription is up."""
    with pytest.raises(aioqueue.JobNotFound, match="no job nope in queue 'results'"):
        await queue.job("nope").result(timeout=GUARD)
    assert queue._results.mode == "subscribed"
    with pytest.raises(aioqueue.JobNotFound):
        await queue.job("nope-either").result(timeout=GUARD)


async def test_failure_outcome_raises_job_failed(queue: Queue, ar: aredis.Redis) -> None:
    """A failed outcome reaches the waiter as JobFailed with the remote error."""
    await add_jobs(ar, queue, ["bad"])
    wait = asyncio.create_task(queue.job("bad").result(timeout=GUARD))
    await eventually(lambda: queue._results.mode == "subscribed", what="subscription")
    await ar.set(queue.keys.result("bad"), outcome("no luck", ok=False))
    await ar.publish(queue.keys.done_channel, "bad")
    with pytest.raises(aioqueue.JobFailed, match=r"after 1 attempt: ValueError: no luck"):
        await wait


async def test_a_quiet_subscription_is_pinged_and_still_delivers(
    queue: Queue, ar: aredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After IDLE_PING seconds without a message the listener PINGs its link; the answer is
    read like a message and ignored, and the next finish message still reaches its waiter."""
    monkeypatch.setattr(results_module, "LISTEN_TIMEOUT", 0.02)
    monkeypatch.setattr(results_module, "IDLE_PING", 0.04)
    await add_jobs(ar, queue, ["quiet"])
    wait = asyncio.create_task(queue.job("quiet").result(timeout=GUARD))
    await eventually(lambda: queue._results.mode == "subscribed", what="subscription")
    before = await calls(ar, "ping")
    await eventually(
        lambda: _more(calls(ar, "ping"), before + 2), what="two PINGs from the listener"
    )
    assert not wait.done()
    assert await finish(ar, queue, {"quiet": "heard"}) == 1
    assert await wait == "heard"


async def _more(count: Any, than: int) -> bool:
    return int(await count) >= than


async def test_resubscribe_after_the_link_drops_loses_nothing(
    queue: Queue, ar: aredis.Redis
) -> None:
    """A finish whose message went out while the subscription was cut is still delivered: the
    listener resubscribes and checks every waiter again."""
    await add_jobs(ar, queue, ["a", "b"])
    wait_a = asyncio.create_task(queue.job("a").result(timeout=GUARD))
    wait_b = asyncio.create_task(queue.job("b").result(timeout=GUARD))
    await eventually(lambda: queue._results.mode == "subscribed", what="subscription")
    epoch = queue._results._epoch
    assert await ar.client_kill_filter(_type="pubsub") == 1
    await finish(ar, queue, {"a": "while down"})  # its message reaches nobody, or the new link
    assert await wait_a == "while down"
    await eventually(lambda: queue._results._epoch > epoch, what="resubscribed")
    await eventually(lambda: subscribers(ar, queue), what="subscriber back")
    assert not wait_b.done()
    assert await finish(ar, queue, {"b": "after"}) == 1
    assert await wait_b == "after"


@pytest.fixture(params=["command", "channel"])
async def nosub_url(
    request: pytest.FixtureRequest, redis_url: str, ar: aredis.Redis
) -> AsyncIterator[str]:
    """The URL of an ACL user that may run every command but can't SUBSCRIBE to the done
    channel: the SUBSCRIBE command denied, or no channel allowed."""
    denied = request.param == "command"
    await ar.acl_setuser(
        "nosub",
        enabled=True,
        reset=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"] if denied else None,
        reset_channels=not denied,
        categories=["+@all"],
        commands=["-subscribe"] if denied else None,
    )
    try:
        yield redis_url.replace("redis://", "redis://nosub:pw@", 1)
    finally:
        await ar.acl_deluser("nosub")


async def test_refused_subscription_falls_back_to_batched_checks(
    nosub_url: str, ar: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Where Redis refuses SUBSCRIBE (NOPERM), waiters still get their outcomes: every waited-for
    id is checked on a short interval, all in one round trip, and a warning says so once."""
    caplog.set_level(logging.WARNING, logger="aioqueue.results")
    q = Queue("results", nosub_url)
    ids = [f"job-{i}" for i in range(20)]
    async with q:
        await add_jobs(ar, q, ids)
        waits = [asyncio.create_task(q.job(i).result(timeout=GUARD)) for i in ids]
        await eventually(lambda: q._results.mode == "polling", what="polling fallback")
        with pytest.raises(aioqueue.JobNotFound):
            await q.job("never").result(timeout=GUARD)
        # twenty waiters cost one MGET per interval, not twenty
        start, before = time.monotonic(), await calls(ar, "mget")
        await eventually(lambda: _at_least(ar, "mget", before + 4), what="four checks")
        checks = await calls(ar, "mget") - before
        elapsed = time.monotonic() - start
        assert checks <= elapsed / results_module.POLL_INTERVAL + 2
        await finish(ar, q, {i: i for i in ids[:10]}, publish=False)
        assert await asyncio.gather(*waits[:10]) == ids[:10]
        await q._results.close()  # a new listener is refused too, and says nothing more
        await finish(ar, q, {i: i for i in ids[10:]}, publish=False)
        assert await q.job(ids[-1]).result(timeout=GUARD) == ids[-1]
        assert await asyncio.gather(*waits[10:]) == ids[10:]
    warnings = [r for r in caplog.records if "refused to SUBSCRIBE" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "pw@" not in warnings[0].getMessage()
    assert q.keys.done_channel in warnings[0].getMessage()


async def _at_least(r: aredis.Redis, command: str, n: int) -> bool:
    return await calls(r, command) >= n


async def test_server_that_is_not_redis_ends_the_wait() -> None:
    """Against a port where something other than Redis listens, result(timeout=None) raises
    RedisUnavailable saying so, at once and for every waiter, instead of hanging."""
    async with not_redis() as url:
        q = Queue("results", url, connect_timeout=1.0)
        waits = [q.job(i).result(timeout=None) for i in ("a", "b", "c")]
        outcomes = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), GUARD)
        for exc in outcomes:
            assert isinstance(exc, aioqueue.RedisUnavailable), exc
            assert f"the server at {url} does not speak the Redis protocol" in str(exc)
        with pytest.raises(aioqueue.RedisUnavailable, match="does not speak the Redis protocol"):
            await asyncio.wait_for(q.job("again").result(), GUARD)  # a later wait too
        await q.aclose()


async def test_refused_credentials_end_the_wait(redis_url: str) -> None:
    """With a wrong password, result(timeout=None) raises RedisUnavailable naming the refusal
    instead of reconnecting for ever; the password is not shown."""
    q = Queue("results", redis_url.replace("redis://", "redis://nobody:secret@", 1))
    with pytest.raises(aioqueue.RedisUnavailable, match="refused the credentials") as info:
        await asyncio.wait_for(q.job("a").result(), GUARD)
    assert "secret" not in str(info.value)
    await q.aclose()


async def test_any_listener_error_reaches_the_waiters(
    queue: Queue, ar: aredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in the listener ends every wait with an aioqueue error naming it,
    and the next wait starts a new listener."""
    await add_jobs(ar, queue, ["a"])

    async def broken(pubsub: object) -> None:
        raise rex.DataError("unexpected reply")

    with monkeypatch.context() as m:
        m.setattr(queue._results, "_receive", broken)
        with pytest.raises(aioqueue.AioqueueError, match="DataError: unexpected reply"):
            await asyncio.wait_for(queue.job("a").result(), GUARD)
    wait = asyncio.create_task(queue.job("a").result(timeout=GUARD))
    await eventually(lambda: queue._results.mode == "subscribed", what="new subscription")
    await finish(ar, queue, {"a": 1})
    assert await wait == 1


async def _run_through_scripts(q: Queue, value: Any) -> aioqueue.Job[Any]:
    """Submit, claim and finish one job with the real scripts (as a worker would)."""
    from aioqueue.scripts import FinishItem, Receipt

    job = await q.submit("t.f")
    call = str(int(job.id[:12], 16))  # a new number each time: the same call gets its first reply
    _, claim = await q.scripts.claim(1, 10_000, "w", Receipt(q.keys.receipt("c"), call, 60_000))
    [leased] = claim.jobs
    item = FinishItem(leased.id, leased.token, "ok", result=outcome(value), ttl_ms=60_000)
    await q.scripts.finish([item], Receipt(q.keys.receipt("f"), call, 60_000), (60_000, 100))
    return job


async def test_small_outcomes_travel_in_the_finish_message(queue: Queue, ar: aredis.Redis) -> None:
    """An outcome up to 4 kB reaches its waiter in the finish message, with no second read; a
    larger one is read by id, in one round trip."""
    first = await queue.submit("t.f")
    wait = asyncio.create_task(first.result(timeout=GUARD))
    await eventually(lambda: queue._results.mode == "subscribed", what="subscription")
    await eventually(lambda: not queue._results._checks, what="first checks done")
    before = await calls(ar, "mget")
    second = await _run_through_scripts(queue, "x" * 100)  # claims and finishes `first`
    assert await wait == "x" * 100
    assert await calls(ar, "mget") == before
    wait = asyncio.create_task(second.result(timeout=GUARD))
    await eventually(lambda: second.id in queue._results._waiters, what="the second waiter")
    await _run_through_scripts(queue, "y" * 5000)  # claims and finishes `second`
    assert await wait == "y" * 5000
    assert await calls(ar, "mget") - before == 1


def test_announcements_parse_and_refuse_cut_short_ones() -> None:
    """The done channel's message: a version byte, then per job its id and outcome; an outcome
    of length 0 is read by id; a message of ids (earlier versions) still parses."""
    msg = b"\x01" + b"\x02ab" + b"\x00\x00\x00\x03xyz" + b"\x01c" + b"\x00\x00\x00\x00"
    assert results_module.parse_announcement(msg) == [("ab", b"xyz"), ("c", None)]
    assert results_module.parse_announcement(b"id1 id2") == [("id1", None), ("id2", None)]
    with pytest.raises(ValueError, match="cut short in job 'ab'"):
        results_module.parse_announcement(msg[:8])
