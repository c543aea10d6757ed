"""Producer side: submit checks, options, de-duplication, idempotency and connection errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

import aioqueue
from aioqueue import Queue
from aioqueue.task import TaskDef
from aioqueue.testing import RedisServer
from tests import tasks
from tests._async import not_redis

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


async def test_unexpected_keyword_is_named_before_missing_ones(queue: Queue) -> None:
    """A keyword the task doesn't take is named (with the parameter it resembles), even when
    that leaves a parameter missing; missing parameters are all named."""
    add: Any = tasks.add  # called wrongly on purpose: seen as Any by type checkers
    with pytest.raises(aioqueue.ArgumentError, match=r"unexpected keyword argument 'c'$") as info:
        await queue.submit(add, 1, c=3)
    assert "missing" not in str(info.value)
    with pytest.raises(
        aioqueue.ArgumentError, match=r"unexpected keyword argument 'bb' \(did you mean 'b'\?\)"
    ):
        await queue.submit(add, 1, bb=2)
    with pytest.raises(aioqueue.ArgumentError, match="missing required arguments: 'a', 'b'"):
        await queue.submit(add)
    with pytest.raises(aioqueue.ArgumentError, match="multiple values for argument 'a'"):
        await queue.submit(add, 1, a=2)
    with pytest.raises(aioqueue.ArgumentError, match="too many positional arguments"):
        await queue.submit(add, 1, 2, 3)
    assert (await queue.info()).pending == 0


async def test_struct_arguments_are_converted(queue: Queue) -> None:
    """A dict for a Struct parameter is converted to the Struct before it is sent."""
    job = await queue.submit(tasks.norm, {"x": -1, "y": 2})  # type: ignore[arg-type]
    assert await job.status() == "pending"
    with pytest.raises(aioqueue.ArgumentError, match="argument 'p'"):
        await queue.submit(tasks.norm, {"x": "a"})  # type: ignore[arg-type]


def test_positional_calls_check_as_keyword_calls_do() -> None:
    """Arguments given positionally to a task whose parameters all are (the common case, bound
    without inspect's binder) convert and fail as the same arguments given by keyword."""
    td = TaskDef("t", _typed)
    assert td.check((1, {"x": 1, "y": 2}), {}) == ((1, tasks.Point(x=1, y=2)), {})
    assert td.check((), {"n": 1, "p": {"x": 1, "y": 2}}) == ((1, tasks.Point(x=1, y=2)), {})
    for args, kwargs in (((1, {"x": "a"}), {}), ((), {"n": 1, "p": {"x": "a"}})):
        with pytest.raises(aioqueue.ArgumentError, match="t: argument 'p' does not match"):
            td.check(args, kwargs)
    with pytest.raises(aioqueue.ArgumentError, match="argument 'n' does not match"):
        td.check(("40", {"x": 1, "y": 2}), {})  # no lossy conversion on the producer
    assert td.check(("40", {"x": 1, "y": 2}), {}, strict=False)[0][0] == 40
    with pytest.raises(aioqueue.ArgumentError, match="missing a required argument: 'p'"):
        td.check((1,), {})


def _typed(n: int, p: tasks.Point) -> None:
    """A task's signature: two positional parameters, both annotated."""


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
    [(again, _)] = await queue._send([prepared])  # whether it says "created" again may vary
    assert again == prepared.id
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
    assert await job.cancel()  # idempotent: it is cancelled, whoever asked first
    with pytest.raises(aioqueue.JobCancelled):
        await job.result(timeout=5)
    assert await job.status() == "cancelled"


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
    q = Queue("down", url, redis_retries=2, connect_timeout=0.5)
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
    q = Queue("pw", f"redis://user:secret@127.0.0.1:{server.port}/0", redis_retries=0)
    with pytest.raises(aioqueue.RedisUnavailable) as info:
        await q.submit("a.b")
    assert "secret" not in str(info.value) and "***" in str(info.value)
    await q.aclose()
    server.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@localhost:8080/",
        "https://localhost/",
        "localhost:6379",
        "tcp://127.0.0.1:6379",
    ],
)
def test_unsupported_url_scheme_is_refused_at_construction(url: str) -> None:
    """A URL Redis can't use raises InvalidOptions when the Queue is made, naming the URL
    (password hidden) and the schemes accepted."""
    with pytest.raises(aioqueue.InvalidOptions) as info:
        Queue("q", url)
    text = str(info.value)
    assert "redis://, rediss://, unix://" in text
    assert "secret" not in text
    assert url.replace("secret", "***") in text


def test_unusable_url_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """$AIOQUEUE_REDIS_URL is checked like the argument, and a port that isn't a number too."""
    monkeypatch.setenv("AIOQUEUE_REDIS_URL", "http://localhost:6379")
    with pytest.raises(aioqueue.InvalidOptions, match=r"'http://localhost:6379' is not a Redis"):
        Queue("q")
    with pytest.raises(aioqueue.InvalidOptions, match=r"'redis://localhost:abc/0' is invalid"):
        Queue("q", "redis://localhost:abc/0")


async def test_server_that_is_not_redis_is_named() -> None:
    """A port where something else listens raises RedisUnavailable saying that the server at
    that URL does not speak the Redis protocol, at once (no retries)."""
    async with not_redis() as url:
        q = Queue("other", url, connect_timeout=1.0)
        start = time.monotonic()
        pattern = rf"the server at {url} does not speak the Redis protocol"
        with pytest.raises(aioqueue.RedisUnavailable, match=pattern):
            await q.submit("x.y", 1)
        with pytest.raises(aioqueue.RedisUnavailable, match=pattern):
            async with q:
                pass
        assert time.monotonic() - start < 5
        await q.aclose()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("dead_ttl", 0, "dead_ttl must be > 0 seconds"),
        ("dead_ttl", -1.5, "dead_ttl must be > 0 seconds"),
        ("dead_ttl", "7d", "dead_ttl must be > 0 seconds"),
        ("max_dead", 0, "max_dead must be an int >= 1"),
        ("max_dead", 2.5, "max_dead must be an int >= 1"),
        ("max_dead", True, "max_dead must be an int >= 1"),
        ("redis_retries", -1, "redis_retries must be an int >= 0"),
        ("max_connections", 0, "max_connections must be an int >= 1"),
        ("connect_timeout", 0, "connect_timeout must be > 0 seconds"),
        ("result_ttl", 0, "result_ttl must be > 0 seconds"),
    ],
)
def test_queue_settings_are_checked(setting: str, value: object, message: str) -> None:
    """Out-of-range Queue settings raise InvalidOptions naming the setting."""
    with pytest.raises(aioqueue.InvalidOptions, match=message):
        Queue("q", **{setting: value})  # type: ignore[arg-type]


def test_dead_letter_retention_settings() -> None:
    """Dead letters are kept 7 days and at most 10,000 by default; both can be set."""
    q = Queue("q")
    assert (q.dead_ttl, q.max_dead) == (7 * 24 * 3600, 10_000)
    q = Queue("q", dead_ttl=60.0, max_dead=5)
    assert (q.dead_ttl, q.max_dead) == (60.0, 5)


def test_command_retries_are_called_redis_retries() -> None:
    """The Redis command retry setting is redis_retries, not to be mistaken for a task's retries."""
    assert Queue("q", redis_retries=1).redis_retries == 1
    with pytest.raises(TypeError):
        Queue("q", retries=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("attempts", "text"),
    [(1, "after 1 attempt: "), (2, "after 2 attempts: "), (0, "failed: ")],
)
def test_job_failed_counts_attempts_in_good_english(attempts: int, text: str) -> None:
    """JobFailed's message says "1 attempt", "2 attempts", or nothing when unknown."""
    exc = aioqueue.JobFailed("j1", "t.add", "ValueError", "bad", attempts=attempts)
    assert text in str(exc)
    assert "1 attempts" not in str(exc)
