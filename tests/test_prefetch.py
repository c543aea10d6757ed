"""Jobs queued in the children's pipes, through real workers: cancels withdraw them without
harm, a child's death passes them on uncounted, timeouts run from each job's start, and the
adaptive depth follows the tasks' run times (prefetch.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis

import aioqueue
from aioqueue import Queue, wire
from aioqueue.worker import Worker, WorkerSettings
from aioqueue.worker.prefetch import MAX_DEPTH, SHORT, Depth, RunTimes
from tests import tasks
from tests._async import eventually
from tests.conftest import ROOT, StartWorker, children_of

pytestmark = pytest.mark.anyio


async def attempts(queue: Queue, jobs: list[aioqueue.Job[str]]) -> list[int]:
    """The attempts each finished job took, as its recorded outcome says."""
    rows = [await queue.scripts.job_info(j.id) for j in jobs]
    return [wire.decode_outcome(row.outcome).attempts for row in rows if row.outcome]


async def test_cancel_of_a_job_queued_behind_a_long_one_spares_the_child(
    queue: Queue, start_worker: StartWorker, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """cancel() of a job waiting in a child's pipe behind a running one withdraws it: it never
    runs and is recorded cancelled, while the child goes on with its job, not killed."""
    worker = await start_worker("--prefetch", "2", processes=1)
    go, ledger = tmp_path / "go", tmp_path / "ledger"
    blocker = await queue.submit(tasks.block_until, str(go))
    queued = await queue.submit(tasks.record, str(ledger), "queued")
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 2, 10, "both claimed")
    (child,) = children_of(worker.pid)
    assert await queued.cancel() is True
    with pytest.raises(aioqueue.JobCancelled):
        await queued.result(timeout=10)
    go.touch()
    assert await blocker.result(timeout=10) is True
    assert children_of(worker.pid) == [child]
    assert not ledger.exists()


async def test_jobs_queued_in_a_killed_child_run_elsewhere_uncounted(
    queue: Queue, start_worker: StartWorker, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """A child SIGKILLed with jobs queued behind its running one: its job fails as its attempt;
    the queued ones run in its replacement with their attempt count unchanged."""
    worker = await start_worker("--prefetch", "3", processes=1)
    go, ledger = tmp_path / "go", tmp_path / "ledger"
    blocker = await queue.submit(tasks.block_until, str(go))
    jobs = await queue.submit_many(tasks.record, [(str(ledger), f"t{i}") for i in range(3)])
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 4, 10, "all four claimed")
    (child,) = children_of(worker.pid)
    os.kill(child, signal.SIGKILL)
    assert [await j.result(timeout=20) for j in jobs] == ["t0", "t1", "t2"]
    assert await attempts(queue, jobs) == [1, 1, 1]
    with pytest.raises(aioqueue.JobFailed, match="ChildDied"):
        await blocker.result(timeout=10)
    pids = {line.split()[1] for line in ledger.read_text().splitlines()}
    assert str(child) not in pids and len(pids) == 1


async def test_a_queued_jobs_timeout_runs_from_its_start(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A job with a 0.5 s timeout queued behind a 0.8 s one is killed 0.5 s into its own run;
    the job ahead of it finishes."""
    await start_worker("--prefetch", "2", processes=1)
    ahead = await queue.submit(tasks.sleep_for, 0.8)
    spinning = await queue.submit(tasks.spin_forever)  # timeout=0.5
    assert await ahead.result(timeout=20) == 0.8
    with pytest.raises(aioqueue.JobFailed, match="timeout of 0.5 s"):
        await spinning.result(timeout=20)


async def _deepest(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Run a burst worker with 2 processes in this process until the queue is empty; the most
    jobs it queued in each child's pipe, as its pool showed at each change."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    settings = WorkerSettings(processes=2, burst=True, handle_signals=False, block_timeout=0.5)
    worker = Worker(queue, "tests.tasks:queue", settings)
    deepest = [0, 0]
    notify = worker._notify

    def watch() -> None:
        if worker.pool is not None:
            queued = worker.pool.queued
            for i, n in enumerate(queued[:2]):
                deepest[i] = max(deepest[i], n)
        notify()

    worker._notify = watch  # type: ignore[method-assign]
    await worker.run()
    return deepest


async def test_no_op_jobs_queue_deep_and_slow_ones_not_at_all(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default a worker learns its tasks' run times: no-op jobs end up several to a child's
    pipe; jobs that run longer than the short-job bound are never queued behind another."""
    noops = await queue.submit_many(tasks.noop, [()] * 600)
    deepest = await _deepest(queue, monkeypatch)
    assert min(deepest) >= 2, deepest
    await noops[-1].result(timeout=5)
    slow = await queue.submit_many(tasks.sleep_for, [(SHORT * 1.2,)] * 6)
    assert await _deepest(queue, monkeypatch) == [0, 0]
    assert await slow[-1].result(timeout=5) == SHORT * 1.2


def test_depth_rule() -> None:
    """The depth per child follows the estimate: deep for tiny jobs, one for short ones, none
    for long or unknown ones; a pinned prefetch ignores run times."""
    times = RunTimes()
    depth = Depth(times=times)
    assert depth.per_child() == 0  # nothing known yet
    times.add("tiny", 0.00001)
    assert depth.per_child() == MAX_DEPTH
    assert depth.fits(3, 0.0001, times.get("tiny"))
    assert not depth.fits(MAX_DEPTH, 0.0001, times.get("tiny"))
    assert depth.fits(0, 0.0, 0.002) and depth.fits(1, 0.002, 0.002)
    assert not depth.fits(2, 0.004, 0.002)  # past the budget
    for _ in range(60):
        times.add("mid", 0.02)
    assert depth.per_child() == 1  # one ahead per child...
    assert depth.fits(0, 0.0, 0.02)  # ...queued in its pipe
    assert not depth.fits(1, 0.02, 0.02)  # one only
    for _ in range(60):
        times.add("long", 2.0)
    assert depth.per_child() == 0 and not depth.fits(0, 0.0, 2.0)
    assert not depth.fits(0, 0.0, None)  # unknown
    for _ in range(40):
        times.add("tiny", 0.00001)
    assert times.get("tiny") == pytest.approx(0.00001)
    pinned = Depth(pinned=5)
    assert pinned.per_child() == 5 and pinned.fits(4, 100.0, None) and not pinned.fits(5, 0, 0)
