"""Soak: a mixed workload under a seeded stream of random faults.

Short by default (``$AIOQUEUE_SOAK_SECONDS``, 60 s); the long run sets it higher.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import anyio
import pytest

from aioqueue import Call
from aioqueue.testing import RedisServer

from .harness import (
    KEYS,
    Scenario,
    admin,
    open_fds,
    producer,
    rss_kib,
    signal_pid,
    summary,
)
from .ledger_tasks import FLAKY, SUICIDE, WORK

pytestmark = [pytest.mark.chaos, pytest.mark.soak, pytest.mark.anyio]

FAULTS = ["supervisor-kill", "child-kill", "redis-kill", "drop-replies", "blackhole", "sigstop"]


@pytest.mark.timeout(600)
async def test_soak_mixed_faults(
    redis_factory: Callable[..., RedisServer], scenario: Scenario
) -> None:
    seconds = float(os.environ.get("AIOQUEUE_SOAK_SECONDS", "60"))
    server = redis_factory(appendonly=True, appendfsync="always")
    hist = scenario.history("S19 soak")
    multi: set[str] = set()
    async with admin(server) as r:
        await r.ping()
        mem_base = int((await r.info("memory"))["used_memory"])
    with scenario.proxy(server, scenario.rng.randrange(1 << 30)) as proxy:
        a, b = await scenario.pair(proxy.url, server.url)
        hist.t0 = time.time()
        faults: list[str] = []
        in_flight = 0  # jobs under a lease as each fault struck: all a fault can run twice
        samples: list[tuple[float, int, int]] = []
        async with producer(server.url, redis_retries=3) as q:
            stop = anyio.Event()

            async def produce() -> None:
                i = 0
                while not stop.is_set():
                    calls, tags = [], []
                    for _ in range(10):
                        tag = f"s{i}"
                        i += 1
                        x = scenario.rng.random()
                        if x < 0.01:
                            multi.add(tag)
                            await hist.submit(tag, q.submit(SUICIDE, tag))
                        elif x < 0.11:
                            multi.add(tag)
                            await hist.submit(tag, q.submit(FLAKY, tag, 1))
                        else:
                            cost = 0.5 if x < 0.15 else scenario.rng.uniform(0.001, 0.02)
                            calls.append(Call(tag, cost))
                            tags.append(tag)
                    t = time.time()
                    try:
                        jobs = await q.submit_many(WORK, calls)
                    except Exception as exc:
                        for tag in tags:
                            hist.attempted.setdefault(tag, t)
                            hist.errored[tag] = type(exc).__name__
                    else:
                        hist.record_many(tags, jobs, t)
                    await anyio.sleep(0.1)

            async def inject() -> None:
                nonlocal a, in_flight
                end = time.monotonic() + seconds
                while time.monotonic() < end - 5:
                    await anyio.sleep(scenario.rng.uniform(3.0, 6.0))
                    samples.append((time.time(), rss_kib(b.pid), open_fds(b.pid)))
                    fault = scenario.rng.choice(FAULTS)
                    faults.append(fault)
                    async with admin(server) as r:
                        in_flight += await r.zcard(KEYS.leases)
                    kids = a.children()
                    orphans = scenario.ledger().open_on(kids)
                    hist.fault(fault, orphans if fault != "drop-replies" else ())
                    if fault == "supervisor-kill":
                        a.kill()
                        await scenario.workers.assert_no_orphans()
                        a = await scenario.worker(proxy.url)
                    elif fault == "child-kill" and kids:
                        # the child may have exited since it was listed: nothing to kill then
                        signal_pid(scenario.rng.choice(kids), signal.SIGKILL)
                    elif fault == "redis-kill":
                        await anyio.to_thread.run_sync(server.kill)
                        await anyio.sleep(scenario.rng.uniform(0.2, 1.0))
                        await anyio.to_thread.run_sync(server.start)
                    elif fault == "drop-replies":
                        proxy.drop_reply(0.05)
                        await anyio.sleep(1.0)
                        proxy.heal()
                    elif fault == "blackhole":
                        proxy.blackhole()
                        await anyio.sleep(2.0)
                        proxy.heal()
                    elif fault == "sigstop":
                        a.send(signal.SIGSTOP)
                        await anyio.sleep(2.0)
                        a.send(signal.SIGCONT)
                samples.append((time.time(), rss_kib(b.pid), open_fds(b.pid)))
                stop.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                tg.start_soon(inject)
            record = await scenario.finish(hist, server, multi_start=multi)
        proxy.heal()
    async with admin(server) as r:
        results = [k async for k in r.scan_iter(match=KEYS.result("*"), count=1000)]
        for i in range(0, len(results), 500):
            await r.delete(*results[i : i + 500])
        mem_after = int((await r.info("memory"))["used_memory"])
        dbsize = await r.dbsize()
        kinds = sorted({k.decode().rsplit(":", 1)[-1] for k in await r.keys("*")})
    record["faults_injected"] = faults
    record["leased_at_faults"] = in_flight
    record["supervisor_rss_kib"] = [s[1] for s in samples]
    record["supervisor_fds"] = [s[2] for s in samples]
    record["redis_memory"] = {"baseline": mem_base, "after_drain_without_results": mem_after}
    record["keys_left_without_results"] = {"dbsize": dbsize, "kinds": kinds}
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["dup_results"] == 0, summary(record)
    # a job runs twice only if a fault struck while it was leased (prefetch holds several per
    # child, so a stopped or cut-off worker can leave more than its running jobs behind)
    assert record["dup_exec"] <= in_flight, (summary(record), in_flight)
    assert b.running, b.log_text()[-2000:]
    if len(samples) >= 2:
        assert samples[-1][1] - samples[0][1] < 20_000, record["supervisor_rss_kib"]
        assert samples[-1][2] - samples[0][2] <= 5, record["supervisor_fds"]
    assert mem_after - mem_base < 2 << 20, record["redis_memory"]
