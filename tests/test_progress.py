"""Progress and context inside tasks: reports followed by producers without polling, kept as a
checkpoint across retries, retries and snoozes with their own delays, a timeout extended from
inside the task; through real workers and a real Redis."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest

import aioqueue
from aioqueue import Queue, wire
from aioqueue.admin.jobs import job_data
from aioqueue.context import MIN_INTERVAL, JobContext
from tests import tasks
from tests._async import eventually
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio


async def test_producer_follows_progress_until_the_job_ends(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """``async for p in job.progress()`` yields the report made so far, then each new one, and
    ends once the job has finished; the CLI's job view and ``last_progress()`` show it."""
    await start_worker()
    gate = tmp_path / "gate"
    job = await queue.submit(tasks.half_then_wait, str(gate))
    async with asyncio.timeout(30):
        seen = await _follow(job, gate)
    assert [(p.fraction, p.message) for p in seen] == [(0.5, "half"), (1.0, "done")]
    assert await job.result(timeout=10) == job.id
    assert await job.last_progress() is None  # a finished job keeps only its outcome
    assert [p async for p in job.progress()] == []  # following a finished job ends at once


async def _follow(job: aioqueue.Job[str], gate: Path) -> list[wire.Progress]:
    queue = job.queue
    seen: list[wire.Progress] = []
    async for report in job.progress():
        seen.append(report)
        if report.message == "half":
            last = await job.last_progress()
            assert last is not None and (last.fraction, last.message) == (0.5, "half")
            shown = job_data(queue.name, job.id, await queue.scripts.job_info(job.id))
            assert shown["state"] == "running"
            assert shown["progress"]["message"] == "half" and shown["progress"]["attempt"] == 1
            await asyncio.to_thread(gate.touch)
    return seen


async def test_following_an_unknown_job_raises(queue: Queue) -> None:
    with pytest.raises(aioqueue.JobNotFound):
        async for _ in queue.job("0" * 26).progress():
            pass


async def test_a_retried_job_resumes_from_its_last_checkpoint(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """The first attempt reports steps 1-4 and fails at the fifth; the retry finds state 4 in
    ``job_context().progress`` and starts from there."""
    await start_worker()
    ledger = tmp_path / "ledger"
    job = await queue.submit(tasks.steps, str(ledger), 8, fail_at=4)
    assert await job.result(timeout=20) == 4
    runs = ledger.read_text().splitlines()
    assert runs == [f"{job.id} attempt 1 from 0", f"{job.id} attempt 2 from 4"]
    assert await queue.redis.hlen(queue.keys.progress) == 0  # dropped once done


async def test_a_task_asks_for_retries_with_its_own_delay(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """``ctx.retry(0.25, reason)`` counts an attempt, records the reason, and the next attempt
    starts no sooner than 0.25 s later (the worker's own backoff is 0.05 s)."""
    await start_worker()
    ledger = tmp_path / "ledger"
    job = await queue.submit(tasks.retry_twice, str(ledger), 0.25)
    assert await job.result(timeout=20) == 3
    starts = [float(line.split()[1]) for line in ledger.read_text().splitlines()]
    assert [b - a >= 0.25 for a, b in zip(starts, starts[1:], strict=False)] == [True, True]
    errors = job_data(queue.name, job.id, await queue.scripts.job_info(job.id))["errors"]
    assert errors == []  # a completed job keeps only its outcome
    info = await queue.info()
    assert info.counters.get("retried") == 2


async def test_retry_counts_against_the_retries(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Asked for more retries than allowed, the job is dead-lettered with the task's reason."""
    await start_worker()
    job = await queue.options(retries=1).submit(tasks.retry_twice, str(tmp_path / "l"), 0.0)
    with pytest.raises(aioqueue.JobFailed, match=r"after 2 attempts: Retry: not yet \(2\)"):
        await job.result(timeout=20)


async def test_a_snooze_runs_the_job_later_without_using_an_attempt(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A ``retries=0`` task snoozes twice and still completes, as attempt 1 every time."""
    await start_worker()
    ledger = tmp_path / "ledger"
    job = await queue.submit(tasks.snooze_twice, str(ledger), 0.2)
    assert await job.result(timeout=20) == 1
    runs = [line.split() for line in ledger.read_text().splitlines()]
    assert [r[0] for r in runs] == ["1", "1", "1"]
    starts = [float(r[1]) for r in runs]
    assert all(b - a >= 0.2 for a, b in zip(starts, starts[1:], strict=False))
    info = await queue.info()
    assert info.counters.get("snoozed") == 2 and "retried" not in info.counters


async def test_a_task_extends_its_own_timeout(queue: Queue, start_worker: StartWorker) -> None:
    """A task with a 0.5 s timeout that asks for more time runs to its end; without asking,
    the same work is killed at the timeout."""
    await start_worker()
    extended = await queue.submit(tasks.overrun, 0.8, True)
    plain = await queue.options(retries=0).submit(tasks.overrun, 0.8, False)
    assert await extended.result(timeout=20) == "finished"
    with pytest.raises(aioqueue.JobFailed, match="timeout of 0.5 s"):
        await plain.result(timeout=20)


async def test_async_tasks_see_their_context(queue: Queue, start_worker: StartWorker) -> None:
    await start_worker()
    job = await queue.submit(tasks.async_context)
    assert await job.result(timeout=20) == [job.id, 1, "tests.tasks.async_context"]


def test_job_context_outside_a_task_says_so() -> None:
    with pytest.raises(RuntimeError, match="only available inside a task"):
        aioqueue.job_context()


def test_bad_reports_and_delays_are_refused_clearly() -> None:
    ctx = JobContext("j", 1, "t", "q", None, lambda data: None, lambda s: None)
    with pytest.raises(aioqueue.InvalidOptions, match="fraction must be a number from 0 to 1"):
        ctx.report_progress(1.5)
    with pytest.raises(aioqueue.SerializationError, match="progress state can't be encoded"):
        ctx.report_progress(0.1, state=object())
    with pytest.raises(aioqueue.InvalidOptions, match="delay must be a finite number"):
        ctx.snooze(-1)


def test_a_tight_loop_of_reports_sends_few_frames_and_the_last_one() -> None:
    """10,000 reports in a loop go out as a handful of frames; the last one is sent when the
    interval is up, and a report held back at the job's end is sent then."""
    sent: list[wire.Progress] = []
    arrived = threading.Event()

    def send(data: bytes) -> None:
        sent.append(wire.decode_progress(data))
        arrived.set()

    ctx = JobContext("j", 1, "t", "q", None, send, lambda s: None)
    started = time.monotonic()
    for i in range(10_000):
        ctx.report_progress(i / 10_000, state=i)
    took = time.monotonic() - started
    assert 1 <= len(sent) <= 2 + took / MIN_INTERVAL
    deadline = time.monotonic() + 10
    while sent[-1].state != 9_999 and time.monotonic() < deadline:  # the timer sends it
        arrived.clear()
        arrived.wait(1.0)
    assert sent[-1].state == 9_999
    n = len(sent)
    ctx.report_progress(1.0, "held back")  # within the interval of the last: held
    ctx.close()
    assert [p.message for p in sent[n:]] == ["held back"]
    ctx.report_progress(1.0, "after the end")
    assert len(sent) == n + 1


async def test_reports_of_a_job_are_written_before_its_outcome(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Many short jobs that each report: all complete, and no report is left behind in Redis
    (an outcome recorded before its job's report would leave one)."""
    await start_worker(processes=2)
    jobs = await queue.submit_many(tasks.steps, [(str(tmp_path / "l"), 3)] * 50)
    await asyncio.gather(*(j.result(timeout=30) for j in jobs))
    assert await queue.redis.hlen(queue.keys.progress) == 0


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_a_recovered_job_resumes_from_the_checkpoint_of_its_killed_worker(
    queue: Queue, start_worker: StartWorker
) -> None:
    """Its worker SIGKILLed after a checkpoint, the job is recovered by another worker and
    finds that checkpoint."""
    victim = await start_worker()
    job = await queue.submit(tasks.checkpoint_then_hang, 42)
    await eventually(job.last_progress, 20, "the checkpoint")
    victim.signal(signal.SIGKILL)
    await victim.exited(10)
    await start_worker()
    assert await job.result(timeout=30) == 42
    info = await queue.info()
    assert info.counters.get("recovered") == 1
