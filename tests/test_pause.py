"""Pausing and resuming a queue: the scripts alone, then real workers (claims stop, running jobs
finish, a resume wakes a blocked worker at once, and a paused worker does not poll)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

import aioqueue
from aioqueue import Queue, wire
from aioqueue.scripts import FinishItem, Receipt, Scripts
from tests import tasks
from tests._async import eventually
from tests.conftest import StartWorker
from tests.test_metrics import _free_port, scrape

pytestmark = pytest.mark.anyio

DEAD = (60_000, 1000)
BLOCK_TIMEOUT = 4.0  # the worker's --block-timeout in the timing tests: a poll would show


@pytest.fixture
async def scripts(queue: Queue) -> AsyncIterator[Scripts]:
    yield Scripts(queue.redis, queue.keys, queue.redis_url)


def receipt(queue: Queue, name: str, call: int | str = 1) -> Receipt:
    return Receipt(queue.keys.receipt(name), str(call), 60_000)


def outcome() -> bytes:
    return wire.encode(wire.Outcome(v=1, task="tests.tasks.noop", ok=True, finished=time.time()))


# -- the scripts -------------------------------------------------------------------------------


async def test_paused_claim_leases_nothing_and_leaves_no_wake_token(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """A claim on a paused queue says so, leases nothing and pushes no wake-up token (so idle
    workers stay blocked); a re-sent claim answers as the first time, even after a resume."""
    k = queue.keys
    await queue.submit(tasks.noop)
    sync_redis.delete(k.wake)
    assert await scripts.pause() is True
    assert await scripts.pause() is False  # idempotent
    first = receipt(queue, "w:fetch", 0)
    _, claim = await scripts.claim(5, 10_000, "w", first)
    assert claim.paused and claim.jobs == [] and claim.next_due_ms == -1
    assert sync_redis.llen(k.wake) == 0 and sync_redis.zcard(k.pending) == 1
    assert sync_redis.zcard(k.leases) == 0

    assert await scripts.resume() is True
    assert sync_redis.llen(k.wake) == 1  # the token that wakes one blocked worker
    assert await scripts.resume() is False  # a re-sent resume pushes nothing more
    assert sync_redis.llen(k.wake) == 1
    assert (await scripts.claim(5, 10_000, "w", first))[1] == claim  # the receipt's answer
    _, claim = await scripts.claim(5, 10_000, "w", receipt(queue, "w:fetch", 5))
    assert not claim.paused and len(claim.jobs) == 1


async def test_paused_claim_promotes_due_jobs_and_still_records_outcomes(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis
) -> None:
    """While paused, a due delayed job moves to pending (it keeps its schedule) but is not
    popped, and outcomes sent with the claim are recorded."""
    k = queue.keys
    running = await queue.submit(tasks.noop)
    _, c = await scripts.claim(1, 10_000, "w", receipt(queue, "f", 0))
    [leased] = c.jobs
    delayed = await queue.options(delay=0.05).submit(tasks.noop)
    await scripts.pause()
    ok = FinishItem(running.id, leased.token, "ok", result=outcome(), ttl_ms=60_000)
    finished, claim = await scripts.claim(1, 10_000, "w", receipt(queue, "f", 1), [ok], DEAD)
    assert finished == [1] and claim.paused and claim.jobs == []

    async def promoted() -> bool:
        n = 2 + int(time.monotonic() * 1000)
        _, claim = await scripts.claim(1, 10_000, "w", receipt(queue, "f", n))
        assert claim.paused and claim.jobs == []
        return sync_redis.zscore(k.pending, delayed.id) is not None

    await eventually(promoted, 5, "the delayed job to become due")
    assert await running.status() == "complete"
    assert await delayed.status() == "pending"
    assert sync_redis.zcard(k.scheduled) == 0 and sync_redis.zcard(k.leases) == 0


async def test_info_and_paused_follow_the_flag(queue: Queue) -> None:
    """``paused()`` and ``info().paused`` are False, True after pause(), False after resume();
    both calls are idempotent and return None."""
    assert await queue.paused() is False and (await queue.info()).paused is False
    assert await queue.pause() is None
    await queue.pause()
    assert await queue.paused() is True and (await queue.info()).paused is True
    await queue.submit(tasks.noop)  # submits still work
    assert (await queue.info()).pending == 1
    assert await queue.resume() is None
    await queue.resume()
    assert await queue.paused() is False and (await queue.info()).paused is False


# -- real workers ------------------------------------------------------------------------------


def _stats(r: redis.Redis) -> dict[str, int]:
    raw: dict[str, Any] = r.info("commandstats")  # type: ignore[assignment]
    return {name: int(v["calls"]) for name, v in raw.items()}


async def test_pause_stops_claims_and_resume_wakes_the_worker_at_once(
    queue: Queue, start_worker: StartWorker, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    """After pause() the worker claims nothing (the running job completes, later ones stay
    pending) and sends only its periodic calls; resume() starts the pending jobs at once, far
    sooner than the worker's block timeout, so it did not wait for a poll."""
    worker = await start_worker("--block-timeout", str(BLOCK_TIMEOUT), processes=1)
    go = tmp_path / "go"
    running = await queue.submit(tasks.block_until, str(go))
    await eventually(lambda: _is(running, "running"), 10, "the first job to start")
    await queue.pause()
    waiting = [await queue.submit(tasks.add, i, 1) for i in range(3)]
    go.touch()
    assert await running.result(timeout=20) is True  # a job running at pause time completes
    await worker.wait_log("is paused: claiming nothing")

    # the worker is idle and paused: count what it sends over a second
    before, t0 = _stats(sync_redis), time.monotonic()
    await anyio.sleep(1.0)  # a measuring window, not a wait for some state
    after, dt = _stats(sync_redis), time.monotonic() - t0
    rate = {
        c: (after.get(c, 0) - before.get(c, 0)) / dt for c in ("cmdstat_evalsha", "cmdstat_blpop")
    }
    # heartbeats (every 0.2 s) and recoveries (every 0.2 s, jittered) are ~10 scripts a second;
    # a claim loop that spun while paused would send thousands
    assert rate["cmdstat_evalsha"] < 30, rate
    assert rate["cmdstat_blpop"] <= 2 / BLOCK_TIMEOUT + 1, rate
    assert [await j.status() for j in waiting] == ["pending"] * 3
    assert (await queue.info()).running == 0

    t0 = time.monotonic()
    await queue.resume()
    assert await waiting[0].result(timeout=BLOCK_TIMEOUT) == 1
    latency = time.monotonic() - t0
    assert latency < BLOCK_TIMEOUT / 4, f"resume to first result took {latency:.3f} s"
    assert [await j.result(timeout=20) for j in waiting] == [1, 2, 3]
    await worker.wait_log("resumed: claiming again")
    log = worker.output()
    assert log.count("is paused: claiming nothing") == 1 and log.count("resumed: claiming") == 1
    print(f"paused: {rate}; resume to first result {latency * 1000:.1f} ms")


async def _is(job: aioqueue.Job[Any], state: str) -> bool:
    return await job.status() == state


async def test_delayed_job_due_while_paused_waits_then_runs(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A delayed job that becomes due while the queue is paused goes to pending (a paused claim
    promoted it and took nothing) and runs once the queue is resumed."""
    await start_worker(processes=1)
    await queue.pause()
    job = await queue.options(delay=0.2).submit(tasks.add, 2, 3)
    assert await job.status() == "scheduled"
    # the worker's claims, every --block-timeout while paused, promote it without popping it
    await eventually(lambda: _is(job, "pending"), 10, "the delayed job to be promoted")
    assert (await queue.info()).running == 0
    await queue.resume()
    assert await job.result(timeout=10) == 5


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_expired_leases_are_recovered_while_paused(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A killed worker's job goes back to pending while the queue is paused (recovery goes on),
    is not claimed again until resume, then completes."""
    victim = await start_worker(processes=1)
    go = tmp_path / "go"
    job = await queue.options(retries=1).submit(tasks.block_until, str(go))
    await eventually(lambda: _is(job, "running"), 10, "the job to start")
    await queue.pause()
    victim.signal(signal.SIGKILL)
    await victim.exited(10)
    await start_worker(processes=1)
    await eventually(lambda: _is(job, "pending"), 15, "the expired lease to be recovered")
    info = await queue.info()
    assert info.paused and info.running == 0 and info.counters.get("recovered") == 1
    go.touch()
    await queue.resume()
    assert await job.result(timeout=20) is True


async def test_metrics_show_the_pause(queue: Queue, start_worker: StartWorker) -> None:
    """The worker's /metrics has ``aioqueue_queue_paused`` 1 while the queue is paused, else 0."""
    port = _free_port()
    await start_worker("--metrics-port", str(port))
    assert (await scrape(port)).total("aioqueue_queue_paused", queue=queue.name) == 0
    await queue.pause()
    assert (await scrape(port)).total("aioqueue_queue_paused", queue=queue.name) == 1
    await queue.resume()
    assert (await scrape(port)).total("aioqueue_queue_paused", queue=queue.name) == 0
