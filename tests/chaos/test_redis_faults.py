"""Chaos scenarios around the Redis server: restarts with AOF, duplicate suppression, maxmemory."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import anyio
import pytest

from aioqueue import RedisOutOfMemory
from aioqueue.testing import RedisServer

from .harness import (
    KEYS,
    LEASE,
    Scenario,
    admin,
    eventually,
    keyed_submit,
    producer,
    scaled,
    summary,
)
from .ledger_tasks import WORK

pytestmark = [pytest.mark.chaos, pytest.mark.anyio]

#: Work resumes within 2 s of Redis being back (on the reference machine; scaled to this one's
#: measured speed where it is asserted).
RESUME_BOUND_MS = 2000.0


@pytest.mark.parametrize("mode", ["always", "everysec", "graceful"])
async def test_s4_redis_restart(
    redis_factory: Callable[..., RedisServer], scenario: Scenario, mode: str
) -> None:
    """Redis killed (SIGKILL, or SIGTERM for ``graceful``) and restarted twice under load."""
    server = redis_factory(
        appendonly=True, appendfsync="everysec" if mode == "everysec" else "always"
    )
    hist = scenario.history(f"S4 redis restart ({mode})")
    w = await scenario.worker(server.url)
    hist.t0 = time.time()
    resume_ms: list[float] = []
    async with producer(server.url, redis_retries=3) as q:
        stop = anyio.Event()

        async def submitter(k: int) -> None:
            i = 0
            while not stop.is_set():
                tag = f"p{k}-{i}"
                i += 1
                await hist.submit(tag, q.submit(WORK, tag, 0.01))
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(submitter, k)
            for _ in range(2):
                await anyio.sleep(scenario.rng.uniform(0.6, 1.2))
                orphans = scenario.ledger().open_on(w.children())
                sig = signal.SIGTERM if mode == "graceful" else signal.SIGKILL
                fault = hist.fault(f"redis {sig.name}", orphans)
                await anyio.to_thread.run_sync(server.kill, sig)
                down = scenario.rng.uniform(0.3, 0.8)
                await anyio.sleep(down)
                await anyio.to_thread.run_sync(server.start)
                t_ready = time.time()
                await eventually(
                    lambda t=t_ready: scenario.ledger().first_start_after(t),
                    10.0,
                    "progress after the restart",
                )
                first = scenario.ledger().first_start_after(t_ready)
                assert first is not None
                resume_ms.append(round((first - t_ready) * 1000, 1))
                fault.extra.update(down_s=round(down, 2), resume_ms=resume_ms[-1])
            await anyio.sleep(0.5)
            stop.set()
        record = await scenario.finish(hist, server)
    record["resume_ms"] = resume_ms
    assert w.running, w.log_text()
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["duplicate_jobs"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] <= 2 * 2, summary(record)
    assert max(resume_ms) <= RESUME_BOUND_MS * scaled(1.0), resume_ms


async def test_s14_duplicate_suppression(
    redis_factory: Callable[..., RedisServer], scenario: Scenario
) -> None:
    """3 producers submit the same 40 keys 3 times each, with dropped submit replies and a Redis
    restart: exactly one job per key, each run once; after the TTL a key is admitted again."""
    server = redis_factory(appendonly=True, appendfsync="always")
    hist = scenario.history("S14 duplicate suppression")
    keys = [f"key{i}" for i in range(40)]
    ids: dict[str, set[str]] = {k: set() for k in keys}
    created: dict[str, int] = dict.fromkeys(keys, 0)
    with scenario.proxy(server) as proxy:
        await scenario.worker(server.url)
        hist.t0 = time.time()
        async with producer(proxy.url, redis_retries=3) as q:
            proxy.drop_reply(0.1, match=q.scripts.sha("submit"))

            async def producer_loop(p: int) -> None:
                order = keys * 3
                random.Random(scenario.rng.random() + p).shuffle(order)
                for key in order:
                    job = await keyed_submit(hist, q, key, WORK, 0.01, tries=20)
                    ids[key].add(job.id)
                    created[key] += int(job.created)

            async def restart() -> None:
                await anyio.sleep(scenario.rng.uniform(0.2, 0.5))
                hist.fault("redis SIGKILL")
                await anyio.to_thread.run_sync(server.kill)
                await anyio.sleep(scenario.rng.uniform(0.2, 0.5))
                await anyio.to_thread.run_sync(server.start)

            async with anyio.create_task_group() as tg:
                for p in range(3):
                    tg.start_soon(producer_loop, p)
                tg.start_soon(restart)
            proxy.heal()
            record = await scenario.finish(hist, server)
            # after the result TTL the key is free again
            short = await q.options(key="short", result_ttl=0.3).submit(WORK, "short")
            async with admin(server) as r:
                await eventually(
                    lambda: r.exists(KEYS.result(short.id)), 10.0, "the short job's result"
                )

                async def expired() -> bool:
                    return await r.exists(KEYS.dedup("short")) == 0

                await eventually(expired, 5.0, "the dedup key to expire")
            again = await q.options(key="short").submit(WORK, "short-again")
    multi = {k: sorted(v) for k, v in ids.items() if len(v) != 1}
    record["resets"] = proxy.resets
    record["keys_with_several_ids"] = len(multi)
    assert not multi, multi
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["duplicate_jobs"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["acknowledged"] == len(keys)
    assert record["dup_exec"] <= 2, summary(record)
    assert all(n <= 1 for n in created.values()), created
    assert again.created and again.id != short.id


async def test_s17_maxmemory_submit(
    redis_factory: Callable[..., RedisServer], scenario: Scenario
) -> None:
    """At maxmemory (noeviction) submit raises RedisOutOfMemory and writes nothing; the worker
    drains, after which submits succeed again."""
    server = redis_factory(maxmemory="4mb")
    hist = scenario.history("S17 maxmemory")
    pad = "x" * 20_000
    oom_at = None
    async with producer(server.url) as q, admin(server) as r:
        for i in range(2000):
            tag = f"m{i}"
            try:
                job = await q.submit(WORK, tag, pad=pad)
            except RedisOutOfMemory:
                oom_at = i
                hist.attempted[tag] = time.time()
                break
            hist.attempted[tag] = time.time()
            hist.acked[tag] = job.id
        assert oom_at is not None, "never reached maxmemory"
        for _ in range(5):
            with pytest.raises(RedisOutOfMemory):
                await q.submit(WORK, "refused", pad=pad)
        jobs, pending = await r.hlen(KEYS.jobs), await r.zcard(KEYS.pending)
        assert jobs == pending == len(hist.acked), "a refused submit left a half-written job"
        hist.t0 = time.time()
        await scenario.worker(server.url)
        record = await scenario.finish(hist, server)
        after = [await q.submit(WORK, f"after{i}", pad=pad) for i in range(10)]
        for i, job in enumerate(after):
            hist.acked[f"after{i}"] = job.id
            hist.attempted[f"after{i}"] = time.time()
        record2 = await scenario.finish(hist, server)
    record["jobs_at_full"] = oom_at
    record2["scenario"] = "S17 maxmemory (after drain)"
    assert record["lost"] == 0 and record["dup_exec"] == 0, summary(record)
    assert record2["lost"] == 0 and record2["completed"] == oom_at + 10, summary(record2)


async def test_s17_heartbeat_at_maxmemory(redis_server: RedisServer, scenario: Scenario) -> None:
    """Redis above maxmemory for 2.5 leases must not cost running jobs their leases: no re-run,
    nothing fenced, nothing dead-lettered."""
    hist = scenario.history("S17b heartbeat at maxmemory")
    await scenario.worker(redis_server.url)
    async with producer(redis_server.url) as q, admin(redis_server) as r:
        for i in range(2):
            await hist.submit(f"long{i}", q.submit(WORK, f"long{i}", 3.0, 0, True))
        await eventually(
            lambda: scenario.ledger().starts["long1"] >= 1,
            10.0,
            "long jobs started",
            progress=scenario.ledger_size,
        )
        used = int((await r.info("memory"))["used_memory"])
        await r.config_set("maxmemory", str(used // 2))
        hist.fault("maxmemory below used memory", ["long0", "long1"])
        await anyio.sleep(2.5 * LEASE)
        await r.config_set("maxmemory", "0")
        record = await scenario.finish(hist, redis_server)
    assert record["lost"] == 0, summary(record)
    assert record["dead"] == 0, record["dlq_reasons"]
    assert record["dup_exec"] == 0 and record["fenced"] == 0, summary(record)


async def test_s17_reads_at_maxmemory(redis_server: RedisServer) -> None:
    """Reads (queue info, job status) keep working while Redis is above maxmemory."""
    async with producer(redis_server.url) as q, admin(redis_server) as r:
        job = await q.submit(WORK, "m0", pad="x" * 20_000)
        used = int((await r.info("memory"))["used_memory"])
        await r.config_set("maxmemory", str(used // 2))
        with pytest.raises(RedisOutOfMemory):
            await q.submit(WORK, "m1")
        assert await job.status() == "pending"
        assert (await q.info()).pending == 1
