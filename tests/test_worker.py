"""End to end through real worker subprocesses: results, failures, isolation, signals, crashes."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
import redis

import aioqueue
from aioqueue import Queue
from tests import tasks
from tests._async import eventually
from tests.conftest import StartWorker, WorkerProcess, alive, children_of

pytestmark = pytest.mark.anyio


async def test_result_round_trip(queue: Queue, start_worker: StartWorker) -> None:
    """A submitted job's return value comes back, typed, and can be awaited again by id."""
    await start_worker()
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
    await start_worker()
    assert await waiting == [i + 1 for i in range(300)]
    assert sync_redis.execute_command("PUBSUB", "NUMSUB", queue.keys.done_channel)[1] == 1


async def test_failures_reach_the_producer(queue: Queue, start_worker: StartWorker) -> None:
    """A raising task, an unknown task and a timed-out task each raise JobFailed with a clear
    message, and the worker keeps working."""
    await start_worker()
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
    await start_worker()
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


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_child_crash_fails_only_its_job(queue: Queue, start_worker: StartWorker) -> None:
    """A child killed by SIGKILL or a segfault fails only its own job's attempts; jobs running
    beside it complete, and the pool is whole again."""
    worker = await start_worker(processes=2)
    slow = [await queue.submit(tasks.sleep_for, 0.3) for _ in range(4)]
    crash = await queue.submit(tasks.crash_child)
    segv = await queue.submit(tasks.segfault)
    with pytest.raises(aioqueue.JobFailed, match=r"ChildDied: .*killed by SIGKILL") as raised:
        await crash.result(timeout=30)
    assert raised.value.attempts == 2
    with pytest.raises(aioqueue.JobFailed, match=r"ChildDied: .*killed by SIGSEGV"):
        await segv.result(timeout=30)
    assert [await j.result(timeout=30) for j in slow] == [0.3] * 4
    await eventually(lambda: len(children_of(worker.pid)) == 2, 10, "pool back to 2 children")
    assert await (await queue.submit(tasks.add, 1, 1)).result(timeout=20) == 2


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_sigkilled_supervisor_loses_nothing(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A SIGKILLed supervisor's running jobs are recovered by another worker, and its children
    exit by themselves."""
    ledger = tmp_path / "ledger"
    victim = await start_worker(processes=2)
    jobs = await queue.submit_many(tasks.record, [(str(ledger), f"t{i}", 0.4) for i in range(6)])
    await eventually(
        lambda: ledger.exists() and len(ledger.read_text().splitlines()) >= 2, 20, "start"
    )
    kids = children_of(victim.pid)
    victim.signal(signal.SIGKILL)
    await victim.exited(10)
    await eventually(lambda: not any(alive(p) for p in kids), 10, "orphan children to exit")
    killed_at = time.monotonic()
    await start_worker(processes=2)
    assert [await j.result(timeout=30) for j in jobs] == [f"t{i}" for i in range(6)]
    assert time.monotonic() - killed_at < 10
    info = await queue.info()
    assert info.counters.get("recovered", 0) >= 1
    assert info.pending == info.running == info.dead == 0


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_poison_pill_killing_its_worker_is_dead_lettered(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A job that kills its worker's supervisor every time is dead-lettered after its attempts."""
    job = await queue.submit(tasks.kill_supervisor)  # retries=1: two attempts
    for _ in range(2):
        w = await start_worker(processes=1, wait=False)
        assert await w.exited(20) == -signal.SIGKILL
    await start_worker(processes=1)
    with pytest.raises(aioqueue.JobFailed, match=r"after 2 attempts: WorkerLost"):
        await job.result(timeout=30)


async def test_sigterm_drains_running_jobs_and_exits_zero(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """On SIGTERM the worker takes no new job, lets running ones finish, and exits 0."""
    worker = await start_worker(processes=2)
    running = await queue.submit_many(tasks.sleep_for, [(0.5,), (0.5,)])
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 2, 10, "both running")
    waiting = await queue.submit(tasks.add, 1, 1)
    worker.signal(signal.SIGTERM)
    assert await worker.exited(20) == 0
    assert [await j.result(timeout=5) for j in running] == [0.5, 0.5]
    assert await waiting.status() == "pending"


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_grace_expiry_hands_jobs_back_uncounted(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """Jobs still running when the grace period ends are handed back at once, the attempt not
    counted; a second signal does the same without waiting."""
    worker = await start_worker("--grace", "0.3")
    job = await queue.submit(tasks.sleep_for, 30.0)
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 1, 10, "job running")
    worker.signal(signal.SIGTERM)
    assert await worker.exited(10) == 0
    assert "grace period ran out: handing back 1 running job" in worker.output()
    assert await job.status() == "pending"
    assert int(sync_redis.hget(queue.keys.attempts, job.id) or 0) == 0
    worker = await start_worker("--grace", "60")
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 1, 10, "job running again")
    worker.signal(signal.SIGTERM)
    await worker.wait_log("SIGTERM: no new jobs")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await worker.exited(10) == 0
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
    await start_worker()
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
    """A worker whose lease expired and was recovered cannot record its late result; the
    recovery's error says the holder was still heartbeating."""
    from aioqueue.scripts import Receipt, Scripts
    from aioqueue.worker._state import Held
    from aioqueue.worker.outcomes import Outcomes
    from aioqueue.worker.settings import WorkerSettings

    job = await queue.submit(tasks.add, 1, 2)
    scripts = Scripts(queue.redis, queue.keys, queue.redis_url)
    dead = (60_000, 100)
    await scripts.heartbeat("w", 60_000, [], Receipt(queue.keys.receipt("b"), "1", 60_000))
    _, claim = await scripts.claim(1, 50, "w", Receipt(queue.keys.receipt("c"), "1", 60_000))
    [leased] = claim.jobs
    rows = await eventually(lambda: scripts.expired(10, dead), 5, "the lease to expire")
    outcomes = Outcomes(queue, WorkerSettings(processes=1))
    [row] = rows  # type: ignore[misc]
    lost = outcomes.lost(Held(row, aioqueue.wire.decode_envelope(row.data)))
    assert await scripts.finish([lost], Receipt(queue.keys.receipt("r"), "1", 60_000), dead) == [1]
    assert await job.status() == "pending"
    [err] = aioqueue.wire.decode_errors(sync_redis.hget(queue.keys.errors, job.id) or b"")
    assert err.type == "WorkerLost" and "still heartbeating" in err.message
    late = outcomes.success(
        Held(leased, aioqueue.wire.decode_envelope(leased.data)), aioqueue.wire.NIL
    )
    assert await scripts.finish([late], Receipt(queue.keys.receipt("f"), "1", 60_000), dead) == [0]
    assert (await queue.info()).counters["fenced"] == 1


async def test_delayed_job_runs_after_its_delay(queue: Queue, start_worker: StartWorker) -> None:
    """A delayed job is not started before its delay (on Redis's clock) and runs soon after."""
    await start_worker()
    t0 = time.monotonic()
    job = await queue.options(delay=0.6).submit(tasks.add, 1, 1)
    assert await job.result(timeout=20) == 2
    assert time.monotonic() - t0 >= 0.55


async def test_priority_runs_first(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """Among waiting jobs, a higher priority runs first."""
    ledger = tmp_path / "order"
    low = await queue.submit_many(tasks.record, [(str(ledger), f"low{i}") for i in range(3)])
    high = await queue.options(priority=10).submit(tasks.record, str(ledger), "high")
    await start_worker(processes=1)
    await high.result(timeout=20)
    for j in low:
        await j.result(timeout=20)
    assert ledger.read_text().split()[0] == "high"


async def test_children_start_without_the_redis_client_and_load_it_when_a_task_needs_it(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A child imports the task module without loading redis-py (its start costs half as much
    CPU); a task that submits a job loads it then, and reaches the Redis its worker serves
    (given by --redis-url here; the task module names none)."""
    await start_worker(processes=2)
    job = await queue.submit(tasks.submit_from_child, 2, 3)
    assert await job.result(timeout=30) == (False, 5)


async def test_resp2_connections_run_jobs_as_resp3_ones_do(
    redis_url: str, start_worker: StartWorker
) -> None:
    """redis-py speaks RESP3 by default; with ?protocol=2 in the URL (for a server or proxy
    that lacks HELLO 3) the worker's held links, the producer's submits and the result
    listener read RESP2 replies and messages, and every connection is RESP2."""
    url = f"{redis_url}?protocol=2"
    await start_worker("--redis-url", url, processes=2)
    tasks.queue.redis_url = url
    async with tasks.queue as q:
        jobs = await q.submit_many(tasks.add, [(i, 1) for i in range(50)])
        assert [await j.result(timeout=20) for j in jobs] == [i + 1 for i in range(50)]
        assert await (await q.submit(tasks.add, 2, 3)).result(timeout=20) == 5
        with redis.Redis.from_url(url) as r:
            assert {c["resp"] for c in r.client_list()} == {"2"}


async def test_children_recycle_after_max_tasks(queue: Queue, start_worker: StartWorker) -> None:
    """With --max-tasks-per-child 2, a child is replaced after two jobs."""
    await start_worker("--max-tasks-per-child", "2", processes=1)
    pids = [await (await queue.submit(tasks.pid)).result(timeout=20) for _ in range(6)]
    assert len(set(pids)) == 3


async def test_worker_resumes_after_redis_restart(
    queue: Queue, start_worker: StartWorker, redis_server: aioqueue.testing.RedisServer
) -> None:
    """A worker rides out a Redis restart and goes on consuming after it."""
    await start_worker()
    assert await (await queue.submit(tasks.add, 1, 1)).result(timeout=20) == 2
    redis_server.restart()
    job = await queue.submit(tasks.add, 2, 2)
    assert await job.result(timeout=30) == 4


async def test_burst_exits_when_queue_is_empty(queue: Queue, start_worker: StartWorker) -> None:
    """--burst runs the waiting jobs, then exits 0."""
    jobs = await queue.submit_many(tasks.add, [(i, 0) for i in range(10)])
    worker = await start_worker("--burst", wait=False)
    assert await worker.exited(30) == 0
    assert [await j.result(timeout=5) for j in jobs] == list(range(10))


async def test_results_awaited_long_after_they_finished(
    queue: Queue, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results awaited only after many other jobs finished (their messages long gone) still
    arrive, and an id submitted elsewhere is found too."""
    import aioqueue.results as qmod

    monkeypatch.setattr(qmod, "RECENT_FINISHED", 10)
    await start_worker()
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
        worker = await start_worker()
        await worker.wait_log("maxmemory-policy is 'allkeys-lru'")
        assert "set it to noeviction" in worker.output()
    finally:
        sync_redis.config_set("maxmemory-policy", "noeviction")


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_worker_whose_children_cannot_start_hands_jobs_back_and_exits(
    queue: Queue, start_worker: StartWorker, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """When the task module stops importing (a bad deploy) and children can't be replaced, the
    worker hands back the jobs it holds, uncounted, and exits non-zero with the import error in
    its log; meanwhile it claims nothing for children it doesn't have."""
    broken, ledger = tmp_path / "broken", tmp_path / "ledger"
    worker = await start_worker(
        "--prefetch", "2", "--max-tasks-per-child", "1", "--max-start-failures", "2",
        processes=1, env={"AIOQUEUE_TEST_BREAK_IMPORT": str(broken)},
    )  # fmt: skip
    jobs = await queue.submit_many(tasks.record, [(str(ledger), f"t{i}", 0.5) for i in range(3)])
    await eventually(lambda: ledger.exists() and ledger.read_text(), 20, "the first start")
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 3, 10, "all three held")
    broken.write_text("deployed a bad version")  # the child retires after its job: no successor
    assert await worker.exited(30) != 0
    out = worker.output()
    assert "ImportError: tests.tasks: deployed a bad version" in out
    assert "handing jobs back" in out
    assert await jobs[0].result(timeout=5) == "t0"
    assert [await j.status() for j in jobs[1:]] == ["pending"] * 2
    assert [line.split()[0] for line in ledger.read_text().splitlines()] == ["t0"]
    attempts = sync_redis.hmget(queue.keys.attempts, [j.id for j in jobs[1:]])
    assert not any(int(v) for v in attempts if v)
    late = await queue.submit(tasks.add, 1, 1)
    assert await late.status() == "pending"


async def test_sigterm_hands_prefetched_jobs_back_unstarted(
    queue: Queue, start_worker: StartWorker, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """Jobs claimed ahead (prefetch) and not started are handed back at once on SIGTERM and
    never run there; the running one finishes within the grace period."""
    ledger = tmp_path / "ledger"
    worker = await start_worker("--prefetch", "4", "--grace", "30", processes=1)
    jobs = await queue.submit_many(tasks.record, [(str(ledger), f"t{i}", 0.5) for i in range(5)])
    await eventually(lambda: ledger.exists() and ledger.read_text(), 20, "the first start")
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 5, 10, "all five claimed")
    worker.signal(signal.SIGTERM)
    assert await worker.exited(20) == 0
    assert [line.split()[0] for line in ledger.read_text().splitlines()] == ["t0"]
    assert await jobs[0].result(timeout=5) == "t0"
    assert [await j.status() for j in jobs[1:]] == ["pending"] * 4
    assert not any(
        int(v) for v in sync_redis.hmget(queue.keys.attempts, [j.id for j in jobs[1:]]) if v
    )


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_a_killed_worker_is_listed_as_gone_once_its_heartbeat_lapses(
    queue: Queue, start_worker: StartWorker
) -> None:
    """info() counts live workers by heartbeat deadline: a SIGKILLed worker, which never said
    goodbye, is listed as gone within a lease, even with no other worker running."""
    worker = await start_worker()
    assert (await queue.info()).workers == 1
    worker.signal(signal.SIGKILL)
    await worker.exited(10)

    async def gone() -> bool:
        info = await queue.info()
        return info.workers == 0 and len(info.gone_workers) == 1

    await eventually(gone, 10, "the killed worker listed as gone")


async def test_worker_pointed_at_a_non_redis_port_logs_one_line_per_outage(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    """A worker whose URL leads to something that isn't Redis says which URL it uses, logs one
    line for the outage (no traceback storm), and keeps trying."""
    from tests._async import not_redis
    from tests.conftest import WorkerProcess

    async with not_redis() as url:
        worker = WorkerProcess(url, tmp_path / "w.log", processes=1).start()
        try:
            await eventually(lambda: "failed" in worker.output(), 30, "the outage line")
            await eventually(lambda: len(children_of(worker.pid)) == 1, 10, "the child")
            out = worker.output()
            assert url in out
            assert "Traceback" not in out
            assert sum("retrying with backoff" in line for line in out.splitlines()) == 1
            assert worker.proc is not None and worker.proc.poll() is None
        finally:
            worker.signal(signal.SIGKILL)  # a drain would wait on Redis that isn't there
            worker.stop()


async def test_worker_logs_its_url_at_start_without_the_password(
    redis_url: str, tmp_path: Path
) -> None:
    url = redis_url.replace("redis://", "redis://nobody:secret@", 1)
    worker = WorkerProcess(url, tmp_path / "w.log", processes=1).start()
    try:
        await eventually(lambda: "nobody:***@" in worker.output(), 30, "the start line")
        assert "secret" not in worker.output()
    finally:
        worker.signal(signal.SIGKILL)
        worker.stop()
