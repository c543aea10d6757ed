"""Cancelling a running job: its worker kills the child at its next heartbeat and records the
job as cancelled, with no retry; the worker goes on. Also what the scripts do when a cancel
meets a retry, a release or a recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

import aioqueue
from aioqueue import Queue
from aioqueue.scripts import FinishItem, Receipt, Scripts
from tests import tasks
from tests._async import eventually
from tests.conftest import StartWorker, alive

pytestmark = pytest.mark.anyio


async def test_a_running_job_is_stopped_and_its_child_is_gone(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """cancel() of a running job returns True once its worker has killed the child; result()
    raises JobCancelled; the attempt is not retried; the next job runs in a new child."""
    await start_worker()
    ledger = tmp_path / "ledger"
    job = await queue.submit(tasks.record, str(ledger), "long", 60)
    await eventually(lambda: ledger.exists() and ledger.read_text(), 20, "the job to start")
    child = int(ledger.read_text().split()[1])
    started = time.monotonic()
    assert await job.cancel() is True
    latency = time.monotonic() - started
    with pytest.raises(aioqueue.JobCancelled, match=f"job {job.id}"):
        await job.result(timeout=10)
    await eventually(lambda: not alive(child), 10, "the job's child to be gone")
    assert await job.status() == "cancelled"
    assert await job.cancel() is True  # asked again: it is cancelled
    info = await queue.info()
    assert info.counters.get("cancelled") == 1 and "retried" not in info.counters
    assert await (await queue.submit(tasks.add, 2, 3)).result(timeout=20) == 5
    assert ledger.read_text().count("long") == 1  # never run again
    print(f"cancel latency: {latency * 1000:.0f} ms (heartbeat 0.2 s)")


async def test_cancel_of_a_job_that_finished_first_is_false(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A job that completed is not cancelled, and says so."""
    await start_worker()
    job = await queue.submit(tasks.add, 1, 1)
    assert await job.result(timeout=20) == 2
    assert await job.cancel() is False


@pytest.fixture
async def scripts(queue: Queue) -> Scripts:
    return queue.scripts


def _r(queue: Queue, name: str, call: str = "1") -> Receipt:
    return Receipt(queue.keys.receipt(name), call, 60_000)


@pytest.mark.parametrize("kind", ["retry", "release"])
async def test_a_retry_or_release_after_a_cancel_is_a_cancel(
    queue: Queue, scripts: Scripts, sync_redis: redis.Redis, kind: str
) -> None:
    """A worker that sends a retry (the child died) or a release (shutdown) for a job whose
    cancel was asked meanwhile records it cancelled: it never runs again."""
    job = await queue.submit(tasks.noop)
    _, claim = await scripts.claim(1, 60_000, "w", _r(queue, "c", "5"))
    [leased] = claim.jobs
    assert await scripts.cancel([(job.id, b"-", None)], 60_000) == [2]
    cancelled = b"cancelled-outcome"
    item = FinishItem(job.id, leased.token, kind, result=cancelled, error=b"e", ttl_ms=60_000)  # type: ignore[arg-type]
    assert await scripts.finish([item], _r(queue, "f"), (60_000, 100)) == [1]
    k = queue.keys
    assert sync_redis.get(k.result(job.id)) == cancelled
    assert sync_redis.zcard(k.pending) + sync_redis.zcard(k.scheduled) == 0
    assert not sync_redis.hexists(k.jobs, job.id) and not sync_redis.hexists(k.cancels, job.id)
    assert sync_redis.hget(k.stats, "cancelled") == b"1"


async def test_an_expired_job_is_not_started(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A job claimed after its expiry is recorded cancelled, with the reason, and never runs;
    one within its expiry runs."""
    ledger = tmp_path / "ledger"
    late = await queue.options(expires=0.05).submit(tasks.record, str(ledger), "late")
    fresh = await queue.options(expires=600).submit(tasks.record, str(ledger), "fresh")
    expired_at = time.time() + 0.05
    await eventually(lambda: time.time() > expired_at, 5, "the first job's expiry")
    await start_worker()
    with pytest.raises(aioqueue.JobCancelled, match="was cancelled: it expired .* before a wor"):
        await late.result(timeout=20)
    assert await fresh.result(timeout=20) == "fresh"
    assert ledger.read_text().split()[::2] == ["fresh"]
    assert await late.status() == "cancelled"
    with pytest.raises(aioqueue.InvalidOptions, match="expires must be > 0 seconds, got 0"):
        queue.options(expires=0)


async def test_cancel_by_task_and_by_key(queue: Queue, redis_url: str) -> None:
    """cancel_where cancels every unfinished job of a task, or with a key; the others stay;
    the command does the same, asking first unless --yes."""
    from tests.test_admin import aq

    later = queue.options(delay=600)
    adds = [await later.submit(tasks.add, i, i) for i in range(3)]
    keyed = await queue.options(delay=600, key="report-7").submit(tasks.noop)
    other = await later.submit(tasks.noop)
    assert sorted(await queue.cancel_where(task="tests.tasks.add")) == sorted(j.id for j in adds)
    assert await queue.cancel_where(key="report-7") == [keyed.id]
    assert await other.status() == "scheduled"
    assert [await j.status() for j in adds] == ["cancelled"] * 3
    with pytest.raises(aioqueue.InvalidOptions, match="needs task= or key="):
        await queue.cancel_where()
    refused = await aq(redis_url, "cancel", "--queue", "tests", "--task", "tests.tasks.noop")
    assert refused.code != 0 and "pass --yes" in refused.err
    r = await aq(redis_url, "cancel", "--queue", "tests", "--task", "tests.tasks.noop", "--yes",
                 "--json")  # fmt: skip
    assert r.code == 0 and r.json["cancelled"] == [other.id]
