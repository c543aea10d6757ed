"""Producer side: submit checks, options, de-duplication, idempotency and connection errors."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

import aioqueue
from aioqueue import Queue
from aioqueue.testing import RedisServer
from tests import tasks

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[("asyncio", {}), ("asyncio", {"use_uvloop": True})], ids=["asyncio", "uvloop"]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """The producer runs on plain asyncio and on uvloop."""
    return request.param  # type: ignore[no-any-return]


def _writes(r: redis.Redis) -> int:
    """Number of write commands Redis has run (scripts included)."""
    stats = r.info("commandstats")
    return sum(
        v["calls"]
        for k, v in stats.items()
        if k.split("_", 1)[1] in ("evalsha", "eval", "hset", "zadd", "set", "rpush")
    )


async def test_submit_returns_job_in_redis(queue: Queue, sync_redis: redis.Redis) -> None:
    """A submitted job is pending in Redis once submit() returns."""
    job = await queue.submit(tasks.add, 1, 2)
    assert await job.status() == "pending"
    assert sync_redis.hexists(queue.keys.jobs, job.id)


async def test_submit_by_name_needs_no_function(queue: Queue) -> None:
    """A task can be submitted by its registered name alone."""
    job = await queue.submit("tests.tasks.add", 1, 2)
    assert await job.status() == "pending"


async def test_argument_mismatch_names_parameter_and_writes_nothing(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """Arguments that don't match the annotations raise ArgumentError naming the parameter."""
    await queue.submit(tasks.noop)
    before = sync_redis.dbsize(), _writes(sync_redis)
    with pytest.raises(aioqueue.ArgumentError, match=r"argument 'b' does not match .*int"):
        await queue.submit(tasks.add, 1, "two")
    with pytest.raises(aioqueue.ArgumentError, match="missing a required argument: 'b'"):
        await queue.submit(tasks.add, 1)
    with pytest.raises(aioqueue.ArgumentError, match="unexpected keyword argument 'c'"):
        await queue.submit(tasks.add, 1, 2, c=3)
    assert (sync_redis.dbsize(), _writes(sync_redis)) == before
    assert (await queue.info()).pending == 1


async def test_struct_arguments_are_converted(queue: Queue) -> None:
    """A dict for a Struct parameter is converted to the Struct before it is sent."""
    job = await queue.submit(tasks.norm, {"x": -1, "y": 2})  # type: ignore[arg-type]
    assert await job.status() == "pending"
    with pytest.raises(aioqueue.ArgumentError, match="argument 'p'"):
        await queue.submit(tasks.norm, {"x": "a"})  # type: ignore[arg-type]


async def test_unserializable_argument_is_named(queue: Queue, sync_redis: redis.Redis) -> None:
    """An argument msgpack can't encode raises SerializationError naming it; nothing is written."""
    await queue.submit(tasks.noop)
    before = _writes(sync_redis), sync_redis.dbsize()
    with pytest.raises(aioqueue.SerializationError, match=r"argument 'value' of type object"):
        await queue.submit(tasks.echo, object())
    with pytest.raises(aioqueue.SerializationError, match=r"argument '#1' of type set"):
        await queue.submit("tests.tasks.whatever", 1, {1, 2}.__iter__())
    assert (_writes(sync_redis), sync_redis.dbsize()) == before


async def test_oversize_payload_is_refused_before_any_write(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """A job over max_payload raises PayloadTooLarge with the size and the limit."""
    q = Queue("small", redis_url, max_payload=1024)
    async with q:
        ok = await q.submit("x.y", "a" * 10)
        before = _writes(sync_redis), sync_redis.dbsize()
        with pytest.raises(aioqueue.PayloadTooLarge, match=r"max_payload limit of 1,024 bytes"):
            await q.submit("x.y", "a" * 2000)
        assert (_writes(sync_redis), sync_redis.dbsize()) == before
        assert await ok.status() == "pending"


async def test_bad_options_and_names_are_typed_errors(queue: Queue) -> None:
    """Out-of-range options raise InvalidOptions naming the option."""
    with pytest.raises(aioqueue.InvalidOptions, match="delay"):
        queue.options(delay=-1)
    with pytest.raises(aioqueue.InvalidOptions, match="priority"):
        queue.options(priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(aioqueue.InvalidOptions, match="retries"):
        queue.options(retries=-1)
    with pytest.raises(aioqueue.InvalidOptions, match="timeout"):
        queue.options(timeout=0)
    with pytest.raises(aioqueue.InvalidOptions, match="key"):
        queue.options(key="")
    with pytest.raises(aioqueue.InvalidOptions, match="invalid queue name"):
        Queue("no spaces allowed")
    with pytest.raises(aioqueue.InvalidOptions, match="invalid queue name"):
        Queue("{brace}")


async def test_unregistered_function_is_unknown_task(queue: Queue) -> None:
    """Submitting a function that is not a task of the queue raises UnknownTask."""

    def stray() -> None: ...

    with pytest.raises(aioqueue.UnknownTask, match="decorate it with @queue.task"):
        await queue.submit(stray)


async def test_dedup_key_returns_original_job(queue: Queue, sync_redis: redis.Redis) -> None:
    """A second submit with the same key returns a handle to the original job."""
    first = await queue.options(key="report-1").submit(tasks.add, 1, 2)
    second = await queue.options(key="report-1").submit(tasks.add, 5, 5)
    assert second.id == first.id
    assert first.created and not second.created
    assert (await queue.info()).pending == 1


async def test_concurrent_dedup_submits_make_one_job(queue: Queue) -> None:
    """Concurrent submits with one key (coalesced into one script call) make one job."""
    jobs = await asyncio.gather(
        *(queue.options(key="same").submit(tasks.add, i, i) for i in range(20))
    )
    assert len({j.id for j in jobs}) == 1
    assert sum(j.created for j in jobs) == 1


async def test_submit_script_is_idempotent_by_id(queue: Queue, sync_redis: redis.Redis) -> None:
    """Re-running a submit for the same job id (a client retry after a lost reply) adds nothing."""
    prepared = queue._prepare("tests.tasks.noop", None, (), {}, aioqueue.Options())
    assert await queue._send([prepared]) == [(prepared.id, True)]
    assert await queue._send([prepared]) == [(prepared.id, False)]
    assert sync_redis.zcard(queue.keys.pending) == 1
    assert sync_redis.llen(queue.keys.wake) == 1


async def test_bulk_submit_checks_every_job_first(queue: Queue, sync_redis: redis.Redis) -> None:
    """submit_many writes nothing if any job's arguments are wrong."""
    with pytest.raises(aioqueue.ArgumentError):
        await queue.submit_many(tasks.add, [(1, 2), (3, "x")])
    assert sync_redis.dbsize() == 0
    jobs = await queue.submit_many(tasks.add, [(i, i) for i in range(2500)])
    assert len({j.id for j in jobs}) == 2500
    assert (await queue.info()).pending == 2500


async def test_delay_schedules_and_priority_orders(queue: Queue, sync_redis: redis.Redis) -> None:
    """Delayed jobs wait in 'scheduled'; higher priority sorts first in 'pending'."""
    later = await queue.options(delay=60).submit(tasks.noop)
    low = await queue.submit(tasks.noop)
    high = await queue.options(priority=5).submit(tasks.noop)
    assert await later.status() == "scheduled"
    order = [m.decode() for m in sync_redis.zrange(queue.keys.pending, 0, -1)]
    assert order == [high.id, low.id]


async def test_cancel_withdraws_waiting_job(queue: Queue) -> None:
    """A job cancelled before it starts raises JobCancelled from result()."""
    job = await queue.submit(tasks.noop)
    assert await job.cancel()
    assert not await job.cancel()
    with pytest.raises(aioqueue.JobCancelled):
        await job.result(timeout=5)
    assert await job.status() == "failed"


async def test_result_of_unknown_job(queue: Queue) -> None:
    """Awaiting the result of an id the queue never saw raises JobNotFound."""
    with pytest.raises(aioqueue.JobNotFound):
        await queue.job("nope").result(timeout=5)


async def test_result_timeout(queue: Queue) -> None:
    """result(timeout=...) raises ResultTimeout (a TimeoutError) when no worker runs the job."""
    job = await queue.submit(tasks.noop)
    with pytest.raises(aioqueue.ResultTimeout):
        await job.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        await job.result(timeout=0.05)


async def test_unreachable_redis_fails_fast_and_clearly() -> None:
    """With Redis down, submit raises RedisUnavailable after a bounded wait, never hangs."""
    server = RedisServer()
    url = server.url  # never started: the port refuses connections
    q = Queue("down", url, retries=2, connect_timeout=0.5)
    q.task(tasks.add)
    start = time.monotonic()
    with pytest.raises(aioqueue.RedisUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0"):
        await q.submit(tasks.add, 1, 2)
    assert time.monotonic() - start < 10
    await q.aclose()
    server.stop()


async def test_out_of_memory_is_a_clear_error() -> None:
    """At maxmemory with noeviction, submit raises RedisOutOfMemory and writes no partial job."""
    with RedisServer(maxmemory="2mb") as server:
        q = Queue("oom", server.url)
        q.task(tasks.record)
        async with q:
            with pytest.raises(aioqueue.RedisOutOfMemory, match="out of memory"):
                for _ in range(200):
                    await q.submit_many("x.y", [("a" * 20_000,)] * 10)
            info = await q.info()
            r = redis.Redis.from_url(server.url)
            assert r.hlen(q.keys.jobs) == info.pending
            r.close()


async def test_password_is_hidden_in_errors() -> None:
    """Connection errors name the URL without its password."""
    server = RedisServer()
    q = Queue("pw", f"redis://user:secret@127.0.0.1:{server.port}/0", retries=0)
    with pytest.raises(aioqueue.RedisUnavailable) as info:
        await q.submit("a.b")
    assert "secret" not in str(info.value) and "***" in str(info.value)
    await q.aclose()
    server.stop()
