"""Per-key concurrency: at most ``group_limit`` jobs of a group let into pending or running at
once, across all workers, the others waiting in Redis in submit order; a task's own limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from aioqueue import Queue
from aioqueue.scripts import FinishItem, Receipt
from tests import tasks
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio


def _r(queue: Queue, name: str, call: str) -> Receipt:
    return Receipt(queue.keys.receipt(name), call, 60_000)


async def test_a_group_lets_in_its_limit_and_the_next_when_one_ends(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """Limit 1: of three jobs one is pending, two wait in the group's list; another group is
    not held up; claiming and finishing the first lets the second in; cancelling a waiting job
    takes it out of the list, and cancelling a pending one lets the next in."""
    k = queue.keys
    c1 = queue.options(group="customer-1")
    jobs = [await c1.submit(tasks.noop) for _ in range(4)]
    other = await queue.options(group="customer-2").submit(tasks.noop)
    assert set(sync_redis.zrange(k.pending, 0, -1)) == {jobs[0].id.encode(), other.id.encode()}
    assert sync_redis.lrange(k.gq("customer-1"), 0, -1) == [j.id.encode() for j in jobs[1:]]
    assert await jobs[2].cancel() is True  # waiting in the list: taken out
    _, claim = await queue.scripts.claim(2, 60_000, "w", _r(queue, "c", "10"))
    first = next(j for j in claim.jobs if j.id == jobs[0].id)
    assert {j.id for j in claim.jobs} == {jobs[0].id, other.id}
    item = FinishItem(first.id, first.token, "ok", result=b"r", ttl_ms=60_000, group="customer-1")
    await queue.scripts.finish([item], _r(queue, "f", "1"), (60_000, 100))
    assert sync_redis.zrange(k.pending, 0, -1) == [jobs[1].id.encode()]
    assert await jobs[1].cancel() is True  # pending with the slot: the next one comes in
    assert sync_redis.zrange(k.pending, 0, -1) == [jobs[3].id.encode()]
    assert sync_redis.llen(k.gq("customer-1")) == 0
    assert sync_redis.hget(k.gactive, "customer-1") == b"1"


async def test_jobs_of_a_key_run_one_at_a_time_in_order(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Two workers, three processes: a group of limit 1 and a task of concurrency 1 never
    run two of their jobs at once, and run them in submit order."""
    ledger = tmp_path / "ledger"
    by_key = queue.options(group="tenant-7")
    jobs = [await by_key.submit(tasks.span, str(ledger), f"k{i}") for i in range(4)]
    jobs += [await queue.submit(tasks.one_at_a_time, str(ledger), f"t{i}") for i in range(4)]
    await start_worker(processes=2)
    await start_worker()
    for job in jobs:
        await job.result(timeout=30)
    for prefix in ("k", "t"):
        events = [line.split() for line in ledger.read_text().splitlines()]
        mine = [(e[0], e[1], float(e[2])) for e in events if e[1].startswith(prefix)]
        starts = [tag for kind, tag, _ in sorted(mine, key=lambda e: e[2]) if kind == "start"]
        assert starts == [f"{prefix}{i}" for i in range(4)]  # submit order
        running = 0
        for kind, _, _ in sorted(mine, key=lambda e: e[2]):
            running += 1 if kind == "start" else -1
            assert running <= 1, mine  # never two at once
