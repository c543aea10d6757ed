"""End to end through real worker subprocesses: results, failures, isolation, signals, crashes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

import aioqueue
from aioqueue import Queue
from tests import tasks
from tests.conftest import WorkerProcess, alive, children_of, wait_for

pytestmark = pytest.mark.anyio

StartWorker = Callable[..., WorkerProcess]


async def test_result_round_trip(queue: Queue, start_worker: StartWorker) -> None:
    """A submitted job's return value comes back, typed, and can be awaited again by id."""
    start_worker()
    job = await queue.submit(tasks.add, 2, 3)
    assert await job.result(timeout=20) == 5
    assert await queue.job(job.id).result(timeout=5) == 5
    p = await (await queue.submit(tasks.norm, tasks.Point(x=-3, y=4))).result(timeout=20)
    assert p == tasks.Point(x=3, y=4)
    assert await (await queue.submit("tests.tasks.add", 1, 1)).result(timeout=20) == 2
    assert await (await queue.submit(tasks.add_async, 2, 2)).result(timeout=20) == 4
    assert await job.status() == "complete"


async def test_many_waiters_share_one_subscription(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """Hundreds of jobs awaited at once use one pub/sub connection, not one per job."""
    jobs = await queue.submit_many(tasks.add, [(i, 1) for i in range(300)])
    waiting = asyncio.gather(*(j.result(timeout=60) for j in jobs))
    await asyncio.sleep(0)
    start_worker()
    assert await waiting == [i + 1 for i in range(300)]
    assert sync_redis.execute_command("PUBSUB", "NUMSUB", queue.keys.done_channel)[1] == 1


async def test_failures_reach_the_producer(queue: Queue, start_worker: StartWorker) -> None:
    """A raising task, an unknown task and a timed-out task each raise JobFailed with a clear
    message, and the worker keeps working."""
    start_worker()
    with pytest.raises(aioqueue.JobFailed, match=r"ValueError: boom") as raised:
        await (await queue.submit(tasks.fail, "boom")).result(timeout=20)
    assert raised.value.type == "ValueError" and raised.value.error == "boom"
    assert "raise ValueError(message)" in raised.value.traceback
    with pytest.raises(aioqueue.JobFailed, match=r"UnknownTask: no task named 'tests.tasks.nope'"):
        await (await queue.submit("tests.tasks.nope", 1)).result(timeout=20)
    with pytest.raises(aioqueue.JobFailed, match=r"TimeoutError: attempt exceeded its timeout"):
        await (await queue.submit(tasks.spin_forever)).result(timeout=20)
    with pytest.raises(aioqueue.JobFailed, match=r"SerializationError: .* returned a object"):
        await (await queue.submit(tasks.unencodable_result)).result(timeout=20)
    assert await (await queue.submit(tasks.add, 1, 1)).result(timeout=20) == 2


async def test_retries_then_dead_letter_with_every_error(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A job that keeps failing is retried, then dead-lettered with each attempt's error;
    it can be requeued from the dead letters."""
    start_worker()
    ok = await queue.submit(tasks.flaky, str(tmp_path / "a"), 2)
    assert await ok.result(timeout=20) == 3
    bad = await queue.submit(tasks.fail_retried, "nope")
    with pytest.raises(aioqueue.JobFailed, match="after 3 attempts") as raised:
        await bad.result(timeout=20)
    assert raised.value.attempts == 3
    [dead] = await queue.dead_letters()
    assert dead.id == bad.id and dead.task == "tests.tasks.fail_retried"
    assert [e.attempt for e in dead.errors] == [1, 2, 3]
    assert {e.message for e in dead.errors} == {"nope"}
    assert await queue.requeue_dead([bad.id]) == 1
    with pytest.raises(aioqueue.JobFailed):
        await bad.result(timeout=20)
    assert await queue.purge_dead([bad.id]) == 1
    assert await queue.dead_letters() == []


async def test_child_crash_fails_only_its_job(queue: Queue, start_worker: StartWorker) -> None:
    """A child killed by SIGKILL or a segfault fails only its own job's attempts; jobs running
    beside it complete, and the pool is whole again."""
    worker = start_worker()
    slow = [await queue.submit(tasks.sleep_for, 0.3) for _ in range(4)]
    crash = await queue.submit(tasks.crash_child)
    segv = await queue.submit(tasks.segfault)
    with pytest.raises(aioqueue.JobFailed, match=r"ChildDied: .*killed by SIGKILL") as raised:
        await crash.result(timeout=30)
    assert raised.value.attempts == 2
    with pytest.raises(aioqueue.JobFailed, match=r"ChildDied: .*killed by SIGSEGV"):
        await segv.result(timeout=30)
    assert [await j.result(timeout=30) for j in slow] == [0.3] * 4
    wait_for(lambda: len(children_of(worker.pid)) == 2, 10, "pool back to 2 children")
    assert await (await queue.submit(tasks.add, 1, 1)).result(timeout=20) == 2


async def test_sigkilled_supervisor_loses_nothing(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A SIGKILLed supervisor's running jobs are recovered by another worker, and its children
    exit by themselves."""
    ledger = tmp_path / "ledger"
    victim = start_worker()
    jobs = await queue.submit_many(tasks.record, [(str(ledger), f"t{i}", 0.4) for i in range(6)])
    wait_for(lambda: ledger.exists() and len(ledger.read_text().splitlines()) >= 2, 20, "start")
    kids = children_of(victim.pid)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    wait_for(lambda: not any(alive(p) for p in kids), 10, "orphan children to exit")
    killed_at = time.monotonic()
    start_worker()
    assert [await j.result(timeout=30) for j in jobs] == [f"t{i}" for i in range(6)]
    assert time.monotonic() - killed_at < 10
    info = await queue.info()
    assert info.counters.get("recovered", 0) >= 1
    assert info.pending == info.running == info.dead == 0


async def test_poison_pill_killing_its_worker_is_dead_lettered(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A job that kills its worker's supervisor every time is dead-lettered after its attempts."""
    job = await queue.submit(tasks.kill_supervisor)  # retries=1: two attempts
    for _ in range(2):
        w = start_worker(processes=1, wait=False)
        assert w.wait(20) == -signal.SIGKILL
    start_worker(processes=1)
    with pytest.raises(aioqueue.JobFailed, match=r"after 2 attempts: WorkerLost"):
        await job.result(timeout=30)


async def test_sigterm_drains_running_jobs_and_exits_zero(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """On SIGTERM the worker takes no new job, lets running ones finish, and exits 0."""
    worker = start_worker()
    running = await queue.submit_many(tasks.sleep_for, [(0.5,), (0.5,)])
    wait_for(lambda: sync_redis.zcard(queue.keys.leases) == 2, 10, "both running")
    waiting = await queue.submit(tasks.add, 1, 1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert [await j.result(timeout=5) for j in running] == [0.5, 0.5]
    assert await waiting.status() == "pending"


async def test_grace_expiry_hands_jobs_back_uncounted(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """Jobs still running when the grace period ends are handed back at once, the attempt not
    counted; a second signal does the same without waiting."""
    worker = start_worker("--grace", "0.3")
    job = await queue.submit(tasks.sleep_for, 30.0)
    wait_for(lambda: sync_redis.zcard(queue.keys.leases) == 1, 10, "job running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert await job.status() == "pending"
    assert int(sync_redis.hget(queue.keys.attempts, job.id) or 0) == 0
    worker = start_worker("--grace", "60")
    wait_for(lambda: sync_redis.zcard(queue.keys.leases) == 1, 10, "job running again")
    worker.signal(signal.SIGTERM)
    worker.wait_log("SIGTERM: no new jobs")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - started < 5
    assert await job.status() == "pending"


async def test_garbage_in_redis_is_dead_lettered(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """Garbage written straight into the queue's keys is dead-lettered with its reason while real
    jobs complete."""
    k = queue.keys
    sync_redis.hset(k.jobs, "garbage", b"\xff\x00not msgpack")
    sync_redis.zadd(k.pending, {"garbage": 0})
    sync_redis.hset(k.jobs, "wrongschema", b"\x81\xa1a\x01")  # {"a": 1}
    sync_redis.zadd(k.pending, {"wrongschema": 0})
    sync_redis.zadd(k.pending, {"no-such-job": 0})
    sync_redis.rpush(k.wake, b"\x00junk")
    good = await queue.submit_many(tasks.add, [(i, i) for i in range(20)])
    start_worker()
    assert [await j.result(timeout=30) for j in good] == [2 * i for i in range(20)]
    with pytest.raises(aioqueue.JobFailed, match="MalformedJob: job data can't be decoded"):
        await queue.job("garbage").result(timeout=10)
    with pytest.raises(aioqueue.JobFailed, match="MalformedJob"):
        await queue.job("wrongschema").result(timeout=10)
    dead = {d.id: d for d in await queue.dead_letters()}
    assert set(dead) == {"garbage", "wrongschema"}
    assert dead["garbage"].errors[0].kind == "malformed"
    assert (await queue.info()).counters["stale"] == 1


async def test_stale_worker_completion_is_fenced(queue: Queue, sync_redis: redis.Redis) -> None:
    """A worker whose lease expired and was recovered cannot record its late result."""
    from aioqueue.worker import Worker, WorkerSettings

    job = await queue.submit(tasks.add, 1, 2)
    w = Worker(queue, "tests.tasks:queue", WorkerSettings(processes=1, lease=0.2, heartbeat=0.1))
    [held], _ = await w._claim(1)
    wait_for(lambda: sync_redis.zscore(queue.keys.leases, job.id) is not None, 5)
    other = Worker(queue, "tests.tasks:queue", WorkerSettings(processes=1))
    deadline = time.monotonic() + 5
    while sync_redis.zscore(queue.keys.leases, job.id) is not None:
        assert time.monotonic() < deadline
        reply = await other.scripts.call(
            "expired", [queue.keys.leases, queue.keys.tokens, queue.keys.attempts, queue.keys.jobs],
            [10],
        )  # fmt: skip
        if reply:
            await other._recover(reply)
    assert await job.status() == "pending"
    fin = w._failed(held, "tests.tasks.add", aioqueue.wire.ErrorInfo(type="X", message="y"), 5)
    assert await w._finish([fin]) == [0]
    assert (await queue.info()).counters["fenced"] == 1
    await w.redis.aclose()
    await other.redis.aclose()


async def test_delayed_job_runs_after_its_delay(queue: Queue, start_worker: StartWorker) -> None:
    """A delayed job is not started before its delay (on Redis's clock) and runs soon after."""
    start_worker()
    t0 = time.monotonic()
    job = await queue.options(delay=0.6).submit(tasks.add, 1, 1)
    assert await job.result(timeout=20) == 2
    assert time.monotonic() - t0 >= 0.55


async def test_priority_runs_first(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """Among waiting jobs, a higher priority runs first."""
    ledger = tmp_path / "order"
    low = await queue.submit_many(tasks.record, [(str(ledger), f"low{i}") for i in range(3)])
    high = await queue.options(priority=10).submit(tasks.record, str(ledger), "high")
    start_worker(processes=1)
    await high.result(timeout=20)
    for j in low:
        await j.result(timeout=20)
    assert ledger.read_text().split()[0] == "high"


async def test_children_recycle_after_max_tasks(queue: Queue, start_worker: StartWorker) -> None:
    """With --max-tasks-per-child 2, a child is replaced after two jobs."""
    start_worker("--max-tasks-per-child", "2", processes=1)
    pids = [await (await queue.submit(tasks.pid)).result(timeout=20) for _ in range(6)]
    assert len(set(pids)) == 3


async def test_worker_resumes_after_redis_restart(
    queue: Queue, start_worker: StartWorker, redis_server: aioqueue.testing.RedisServer
) -> None:
    """A worker rides out a Redis restart and goes on consuming after it."""
    start_worker()
    assert await (await queue.submit(tasks.add, 1, 1)).result(timeout=20) == 2
    redis_server.restart()
    job = await queue.submit(tasks.add, 2, 2)
    assert await job.result(timeout=30) == 4


async def test_burst_exits_when_queue_is_empty(queue: Queue, start_worker: StartWorker) -> None:
    """--burst runs the waiting jobs, then exits 0."""
    jobs = await queue.submit_many(tasks.add, [(i, 0) for i in range(10)])
    worker = start_worker("--burst", wait=False)
    assert worker.wait(30) == 0
    assert [await j.result(timeout=5) for j in jobs] == list(range(10))


async def test_results_awaited_long_after_they_finished(
    queue: Queue, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results awaited only after many other jobs finished (their messages long gone) still
    arrive, and an id submitted elsewhere is found too."""
    import aioqueue.queue as qmod

    monkeypatch.setattr(qmod, "RECENT_FINISHED", 10)
    start_worker()
    assert await (await queue.submit(tasks.add, 0, 0)).result(timeout=20) == 0  # subscribed now
    jobs = await queue.submit_many(tasks.add, [(i, 1) for i in range(100)])
    assert await jobs[-1].result(timeout=30) == 100
    assert [await j.result(timeout=10) for j in jobs] == [i + 1 for i in range(100)]
    assert await queue.job(jobs[0].id).result(timeout=10) == 1


async def test_warns_when_redis_may_evict_jobs(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """A worker warns at start when Redis's maxmemory-policy could evict queue keys."""
    sync_redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        worker = start_worker()
        worker.wait_log("maxmemory-policy is 'allkeys-lru'")
        assert "set it to noeviction" in worker.output()
    finally:
        sync_redis.config_set("maxmemory-policy", "noeviction")
