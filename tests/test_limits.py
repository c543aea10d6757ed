"""Limits on a worker's children: CPU time per job (a job over it fails, its child lives on);
memory, soft (a child over it is replaced after its job) and hard (a child over it is killed,
its job fails, no other job is lost). Through real workers, and the pool on its own."""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import pytest

import aioqueue
from aioqueue import CpuLimitExceeded, Queue, wire
from aioqueue.worker.limits import CpuLimit, Limits, in_task
from tests import tasks
from tests.conftest import StartWorker
from tests.test_pool import ok, open_pool, result, submit, value

pytestmark = pytest.mark.anyio


async def test_a_job_over_its_cpu_limit_fails_and_its_child_lives_on(
    queue: Queue, start_worker: StartWorker
) -> None:
    """With --cpu-limit each job gets its own CPU time: a sync or async task over it fails with
    CpuLimitExceeded long before it would end, and the same child runs the next jobs."""
    await start_worker("--cpu-limit", "0.15", processes=1)
    pid = await (await queue.submit(tasks.pid)).result(timeout=20)
    under = [await (await queue.submit(tasks.use_cpu, 0.1)).result(timeout=20) for _ in "ab"]
    assert under == [pid, pid]  # 0.2 s in all: the limit is per job
    over = r"CpuLimitExceeded: used more than 0.15 s of CPU \(cpu_limit\)"
    with pytest.raises(aioqueue.JobFailed, match=over) as raised:
        await (await queue.submit(tasks.spin, 10.0)).result(timeout=5)
    assert ", in spin\n" in raised.value.traceback
    with pytest.raises(aioqueue.JobFailed, match=over):
        await (await queue.submit(tasks.spin_async, 10.0)).result(timeout=5)
    assert await (await queue.submit(tasks.add_async, 2, 2)).result(timeout=20) == 4
    assert await (await queue.submit(tasks.pid)).result(timeout=20) == pid


def test_cpu_limit_raises_in_the_code_that_runs_over_it() -> None:
    """Armed in this process, the limit raises CpuLimitExceeded in the loop that uses the CPU."""
    before = signal.getsignal(signal.SIGPROF)
    limit = CpuLimit(0.05)
    try:
        limit.before_job()
        started = time.process_time()
        with pytest.raises(CpuLimitExceeded, match="used more than 0.05 s of CPU"):
            while time.process_time() - started < 5:
                pass
        assert time.process_time() - started < 1
    finally:
        limit.disarm()
        signal.signal(signal.SIGPROF, before)


def test_only_a_tasks_own_code_is_interrupted() -> None:
    """A task's code is interrupted; aioqueue's is not, nor an encoder aioqueue calls for a
    registered type (it runs after the task returned)."""
    seen: list[FrameType] = []

    class Opaque:
        pass

    wire.register_type(
        Opaque, encode=lambda o: seen.append(sys._getframe()) or 0, decode=lambda v: Opaque()
    )
    wire.encode(Opaque())
    encoder = seen[0]
    assert encoder.f_back is not None and "aioqueue" in encoder.f_back.f_code.co_filename
    assert not in_task(encoder.f_back)  # aioqueue's own code
    assert not in_task(encoder)  # a registered encoder, called by aioqueue
    assert in_task(sys._getframe())  # this function's code: a task's, say


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_a_job_over_the_memory_limit_fails_and_no_other_job_is_lost(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A child that holds more than --memory-limit while it runs a job is killed: that job fails
    with MemoryLimitExceeded, retried as its task says, the job in the other child completes,
    and the worker goes on."""
    worker = await start_worker("--memory-limit", "100", processes=2)
    beside = await queue.submit(tasks.sleep_for, 0.5)
    over = r"after 2 attempts: MemoryLimitExceeded: child RSS \d+ MiB over the limit 100 MiB"
    with pytest.raises(aioqueue.JobFailed, match=over):
        await (await queue.submit(tasks.hog, 150, hold=10.0)).result(timeout=8)
    assert await beside.result(timeout=5) == 0.5
    assert await (await queue.submit(tasks.add, 1, 1)).result(timeout=10) == 2
    assert "over memory_limit 100 MiB; killing it" in worker.output()


async def test_a_child_over_max_memory_per_child_is_replaced_after_its_job(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A job that leaves its child's RSS over --max-memory-per-child completes; the next job
    runs in a new child."""
    await start_worker("--max-memory-per-child", "100", processes=1)
    first = await (await queue.submit(tasks.pid)).result(timeout=20)
    assert await (await queue.submit(tasks.hog, 100, keep=True)).result(timeout=20) == first
    assert await (await queue.submit(tasks.pid)).result(timeout=20) != first


async def test_a_child_over_its_memory_runs_the_jobs_it_holds_then_retires() -> None:
    """Jobs already queued in a child found over max_memory_per_child after a job still run
    there, none withdrawn; the next job goes to its successor."""
    limits = Limits(max_memory_per_child=1)  # every child is over 1 MiB
    async with open_pool(prefetch=2, limits=limits) as (pool, watch):
        held = [submit(pool, "pid")[1] for _ in range(3)]  # one runs, two queue behind it
        pids = [ok(await result(done)) for done in held]
        assert len(set(pids)) == 1
        assert await value(pool, "pid") != pids[0]
        await watch.until(lambda: pool.restarts == 2 and pool.capacity == 1)  # 2nd retired too
