"""Limits on a worker's children through real workers: CPU time per job (a job over it fails,
its child lives on)."""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import pytest

import aioqueue
from aioqueue import CpuLimitExceeded, Queue, wire
from aioqueue.worker.limits import CpuLimit, in_task
from tests import tasks
from tests.conftest import StartWorker

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
