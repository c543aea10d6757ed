"""``async def`` tasks run concurrently in each child, up to ``--async-concurrency`` at once:
the time they take, their timeouts and cancels (their task is cancelled, the child lives on),
a child's death among them, their contexts, and sync tasks beside them. Through real workers,
and the pool on its own."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aioqueue
from aioqueue import Call, Queue, wire
from aioqueue.worker.pool import Pool, Work
from tests import tasks
from tests._async import eventually
from tests.conftest import StartWorker
from tests.test_pool import Reply, error, ok, open_pool, result

pytestmark = pytest.mark.anyio


def entries(ledger: Path) -> list[tuple[str, str, int, int, float]]:
    """The ledger's lines: (event, tag, pid, attempt, time)."""
    if not ledger.exists():
        return []
    rows = [line.split() for line in ledger.read_text().splitlines()]
    return [(e, tag, int(pid), int(a), float(t)) for e, tag, pid, a, t in rows]


def most_at_once(ledger: Path) -> int:
    """The most jobs the ledger shows running at the same time."""
    events = sorted((t, 1 if e == "start" else -1) for e, _, _, _, t in entries(ledger))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def started(ledger: Path, n: int) -> bool:
    return sum(e == "start" for e, *_ in entries(ledger)) >= n


async def test_async_jobs_run_together_in_one_child(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """50 jobs that each sleep 0.2 s finish on one process with --async-concurrency 50 in a
    fraction of the 10 s they sleep in all, all in one child, nearly all at once."""
    await start_worker("--async-concurrency", "50", processes=1)
    ledger = tmp_path / "ledger"
    began = time.monotonic()
    jobs = await queue.submit_many(tasks.nap, [Call(str(ledger), f"t{i}", 0.2) for i in range(50)])
    results = await asyncio.gather(*(j.result(timeout=20) for j in jobs))
    took = time.monotonic() - began
    assert took < 0.25 * 50 * 0.2, f"{took:.2f} s"
    assert len({pid for pid, _, _ in results}) == 1
    assert [r[1:] for r in results] == [[j.id, j.id] for j in jobs]  # each its own context
    assert most_at_once(ledger) >= 40


async def test_with_async_concurrency_1_they_run_one_at_a_time(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """With --async-concurrency 1 the same jobs never overlap."""
    await start_worker("--async-concurrency", "1", processes=1)
    ledger = tmp_path / "ledger"
    jobs = await queue.submit_many(tasks.nap, [Call(str(ledger), f"t{i}", 0.05) for i in range(5)])
    await asyncio.gather(*(j.result(timeout=20) for j in jobs))
    assert most_at_once(ledger) == 1


async def test_reports_of_jobs_running_together_go_to_their_own_jobs(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Each of 10 jobs running at once in one child reports its own id as progress: each
    job's last progress, as producers see it, is its own."""
    await start_worker(processes=1)
    ledger = tmp_path / "ledger"
    jobs = await queue.submit_many(tasks.nap, [Call(str(ledger), f"t{i}", 0.8) for i in range(10)])

    async def reported() -> bool:
        seen = [await j.last_progress() for j in jobs]
        return all(p is not None and p.message == j.id for p, j in zip(seen, jobs, strict=True))

    await eventually(reported, 10, "each job's own report")
    assert most_at_once(ledger) == 10
    await asyncio.gather(*(j.result(timeout=20) for j in jobs))


async def test_an_async_job_past_its_timeout_is_cancelled_and_its_child_goes_on(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A job over its timeout has its task cancelled and fails as a timeout; the jobs running
    beside it in the same child complete, and that child runs the next job."""
    await start_worker(processes=1)
    ledger = tmp_path / "ledger"
    pid = await (await queue.submit(tasks.pid)).result(timeout=20)
    late = await queue.options(timeout=0.3, retries=0).submit(tasks.nap, str(ledger), "late", 30)
    beside = await queue.submit_many(tasks.nap, [Call(str(ledger), f"b{i}", 0.6) for i in "ab"])
    with pytest.raises(aioqueue.JobFailed, match=r"timeout of 0.3 s; its task was cancelled"):
        await late.result(timeout=20)
    assert [(await j.result(timeout=20))[0] for j in beside] == [pid, pid]
    assert await (await queue.submit(tasks.pid)).result(timeout=20) == pid
    assert [tag for e, tag, *_ in entries(ledger) if e == "end"] == ["ba", "bb"]


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_an_async_job_that_will_not_stop_gets_its_child_killed(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A job that swallows its cancellation is given --kill-grace, then its child is killed:
    it fails as a timeout, the job beside it fails as crashed and is retried elsewhere."""
    worker = await start_worker(processes=1)
    ledger = tmp_path / "ledger"
    beside = await queue.submit(tasks.nap, str(ledger), "beside", 30, once=True)
    await eventually(lambda: started(ledger, 1), 20, "the job beside to start")
    stubborn = await queue.submit(tasks.stubborn, str(ledger))
    with pytest.raises(aioqueue.JobFailed, match="did not stop when cancelled, and its child"):
        await stubborn.result(timeout=20)
    pid, _, _ = await beside.result(timeout=20)
    assert [(tag, p != pid, a) for e, tag, p, a, _ in entries(ledger) if e == "start"] == [
        ("beside", True, 1), ("stubborn", True, 1), ("beside", False, 2),
    ]  # fmt: skip
    assert "did not stop job" in worker.output()


async def test_cancelling_a_running_async_job_stops_only_it(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """job.cancel() of an async job running beside others cancels its task: it is recorded
    cancelled and never retried, the others complete in the same child."""
    await start_worker(processes=1)
    ledger = tmp_path / "ledger"
    long = await queue.submit(tasks.nap, str(ledger), "long", 60)
    await eventually(lambda: started(ledger, 1), 20, "the long job to start")
    beside = await queue.submit_many(tasks.nap, [Call(str(ledger), f"b{i}", 0.5) for i in "ab"])
    await eventually(lambda: started(ledger, 3), 20, "the jobs beside it to start")
    assert await long.cancel() is True
    with pytest.raises(aioqueue.JobCancelled):
        await long.result(timeout=10)
    pid = entries(ledger)[0][2]
    assert [(await j.result(timeout=20))[0] for j in beside] == [pid, pid]
    assert [tag for e, tag, *_ in entries(ledger) if e == "end"] == ["ba", "bb"]
    assert await (await queue.submit(tasks.pid)).result(timeout=20) == pid
    assert "retried" not in (await queue.info()).counters


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_a_child_killed_among_async_jobs_fails_exactly_those(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """SIGKILL of a child running 5 async jobs: those 5 fail an attempt and run again; the 2
    jobs waiting for a slot run once; none is lost."""
    await start_worker("--async-concurrency", "5", processes=1)
    ledger = tmp_path / "ledger"
    calls = [Call(str(ledger), f"t{i}", 30 if i < 5 else 0, once=True) for i in range(7)]
    jobs = await queue.submit_many(tasks.nap, calls)
    await eventually(lambda: started(ledger, 5), 20, "five jobs to start")
    victim = entries(ledger)[0][2]
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.gather(*(j.result(timeout=20) for j in jobs))
    assert victim not in {pid for pid, _, _ in results}
    attempts: dict[str, list[int]] = {}
    for e, tag, _pid, attempt, _ in entries(ledger):
        if e == "start":
            attempts.setdefault(tag, []).append(attempt)
    ran_first = [tag for e, tag, pid, *_ in entries(ledger) if e == "start" and pid == victim]
    assert len(ran_first) == 5
    assert attempts == {f"t{i}": [1, 2] if f"t{i}" in ran_first else [1] for i in range(7)}
    assert (await queue.info()).counters.get("retried") == 5


async def test_sync_and_async_jobs_share_a_worker(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Sync and async jobs submitted together to one worker all complete with their values."""
    await start_worker(processes=2)
    ledger = str(tmp_path / "ledger")
    syncs = [await queue.submit(tasks.sleep_for, 0.02) for _ in range(10)]
    adds = await queue.submit_many(tasks.add, [Call(i, 1) for i in range(20)])
    asyncs = await queue.submit_many(tasks.add_async, [Call(i, 2) for i in range(20)])
    naps = await queue.submit_many(tasks.nap, [Call(ledger, f"t{i}", 0.1) for i in range(20)])
    assert [await j.result(timeout=30) for j in syncs] == [0.02] * 10
    assert [await j.result(timeout=30) for j in adds] == [i + 1 for i in range(20)]
    assert [await j.result(timeout=30) for j in asyncs] == [i + 2 for i in range(20)]
    assert [(await j.result(timeout=30))[1] for j in naps] == [j.id for j in naps]


# -- the pool on its own ---------------------------------------------------------------------


def submit_async(pool: Pool, *args: Any) -> tuple[Work, asyncio.Future[Reply]]:
    """Submit ``tests.pool_tasks.nap(*args)`` as a concurrent job."""
    done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    job = wire.ChildJob(
        "tests.pool_tasks.nap", msgspec.Raw(wire.encode(list(args))), msgspec.Raw(wire.encode({}))
    )
    return pool.submit(job, None, done.set_result, concurrent=True), done


async def test_a_child_answers_async_jobs_as_they_end_and_fails_those_it_ran_when_killed() -> None:
    """Three async jobs in one child end in the order of their sleeps, not of their start. Then,
    SIGKILLed with two running and two queued behind them, the child fails the two it ran, and
    the two queued ones run in another child, uncounted."""
    async with open_pool(async_concurrency=3) as (pool, _):
        order: list[int] = []
        runs = [submit_async(pool, s) for s in (0.3, 0.1, 0.2)]
        for i, (_, done) in enumerate(runs):
            done.add_done_callback(lambda _, i=i: order.append(i))
        pids = {ok(await result(done)) for _, done in runs}
        assert order == [1, 2, 0] and len(pids) == 1
    async with open_pool(async_concurrency=2, prefetch=2) as (pool, _):
        running = [submit_async(pool, 30) for _ in range(2)]
        queued = [submit_async(pool, 0) for _ in range(2)]
        await eventually(lambda: pool.queued == [2], 5, "two jobs queued behind two running")
        victim = running[0][0].child
        assert victim is not None and all(w.started for w, _ in running)
        os.kill(victim.pid, signal.SIGKILL)
        for _, done in running:
            err = error(await result(done))
            assert err.kind == "crashed" and "SIGKILL" in err.message
        pids = {ok(await result(done)) for _, done in queued}
        assert len(pids) == 1 and victim.pid not in pids
        assert pool.restarts == 1
