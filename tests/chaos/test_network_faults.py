"""Chaos scenarios on the network between aioqueue and Redis (through the fault proxy), and the
paused supervisor: dropped replies after apply, a blackholed worker, SIGSTOP, a slow link."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import anyio
import msgspec
import pytest

from aioqueue import wire
from aioqueue.testing import RedisServer

from .harness import KEYS, LEASE, Workers, admin, eventually, finish, producer, summary
from .history import History, Ledger, Report
from .ledger_tasks import WORK
from .proxy import ThreadedFaultProxy

pytestmark = [pytest.mark.chaos, pytest.mark.anyio]


async def produce(hist: History, q: object, tags: list[str], *args: object, lanes: int = 4) -> None:
    """Submit one job per tag, ``lanes`` submits at a time (each its own round trip)."""

    async def lane(k: int) -> None:
        for tag in tags[k::lanes]:
            for _ in range(10):
                if await hist.submit(tag, q.submit(WORK, tag, *args)) is not None:  # type: ignore[attr-defined]
                    break
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        for k in range(lanes):
            tg.start_soon(lane, k)


@pytest.mark.parametrize(
    ("script", "p"),
    [("submit", 0.2), ("claim", 0.15), ("finish", 0.2), ("heartbeat", 0.3)],
)
async def test_s7_drop_reply_after_apply(
    redis_server: RedisServer,
    workers: Workers,
    ledger_dir: Path,
    chaos_report: Report,
    chaos_seed: int,
    script: str,
    p: float,
) -> None:
    """Replies to one script are dropped after Redis applied it (the connection is reset):
    no duplicate job, no duplicate result, no job run twice, nothing lost."""
    hist = History(f"S7 drop reply: {script}", chaos_seed)
    with ThreadedFaultProxy("127.0.0.1", redis_server.port, seed=chaos_seed) as proxy:
        w = workers.start(proxy.url)
        await workers.wait_children(w)
        hist.t0 = time.time()
        async with producer(proxy.url, retries=3) as q:
            proxy.drop_reply(p, match=q.scripts.sha(script))
            await produce(hist, q, [f"d{i}" for i in range(150)], 0.005)
            await anyio.sleep(1.0 if script == "heartbeat" else 0.0)
            record = await finish(hist, redis_server, ledger_dir, chaos_report)
            record["dropped_replies"] = proxy.dropped_replies
            proxy.heal()
    assert record["dropped_replies"] > 0
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["duplicate_jobs"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] == 0, summary(record)
    assert w.running


async def test_s8_blackholed_worker(
    redis_server: RedisServer,
    workers: Workers,
    ledger_dir: Path,
    chaos_report: Report,
    chaos_seed: int,
) -> None:
    """Worker A's link is blackholed for 3 leases while worker B runs: B reclaims A's jobs, and
    A's late completions are fenced (counted, never recorded)."""
    hist = History("S8 blackholed worker", chaos_seed)
    with ThreadedFaultProxy("127.0.0.1", redis_server.port, seed=chaos_seed) as proxy:
        a = workers.start(proxy.url)
        b = workers.start(redis_server.url)
        a_kids = await workers.wait_children(a)
        await workers.wait_children(b)
        hist.t0 = time.time()
        async with producer(redis_server.url) as q:
            await produce(hist, q, [f"j{i}" for i in range(40)], 0.4)
            await eventually(
                lambda: len(Ledger.read(ledger_dir).open_on(a_kids)) == 2, 10.0, "A busy", 0.005
            )
            proxy.blackhole()
            orphans = Ledger.read(ledger_dir).open_on(a_kids)
            hist.fault("blackhole A", orphans)
            await anyio.sleep(3 * LEASE)
            proxy.heal()
            record = await finish(hist, redis_server, ledger_dir, chaos_report)
            ledger = Ledger.read(ledger_dir)
            ended_on_a = {e.tag for e in ledger.entries if e.kind == "end" and e.pid in a_kids}
            late = orphans & ended_on_a
            async with admin(redis_server) as r:
                await eventually(
                    lambda: _fenced_at_least(r, len(late)), 15.0, "A's late outcomes fenced"
                )
                fenced = int(await r.hget(KEYS.stats, "fenced") or 0)
    record["fenced"] = fenced
    record["late_completions"] = len(late)
    assert record["lost"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] <= len(orphans), summary(record)
    assert fenced >= len(late) >= 1
    for rec in record["recovery"]:
        assert rec["recovery_ms"] is not None and rec["recovery_ms"] <= 3 * LEASE * 1000
    await _assert_recorded_elsewhere(hist, redis_server, orphans, a_kids)
    assert a.running and b.running


async def _fenced_at_least(r: object, n: int) -> bool:
    return int(await r.hget(KEYS.stats, "fenced") or 0) >= n  # type: ignore[attr-defined]


async def _assert_recorded_elsewhere(
    hist: History, server: RedisServer, tags: set[str], pids: list[int]
) -> None:
    """The recorded result of each of ``tags`` came from a process other than ``pids``."""
    async with admin(server) as r:
        for tag in tags:
            data = await r.get(KEYS.result(hist.acked[tag]))
            assert data is not None
            value = msgspec.msgpack.decode(wire.decode_outcome(data).value)
            assert value[0] == tag and value[1] not in pids, (tag, value, pids)


async def test_s11b_sigstopped_supervisor(
    redis_server: RedisServer,
    workers: Workers,
    ledger_dir: Path,
    chaos_report: Report,
    chaos_seed: int,
) -> None:
    """Supervisor A is SIGSTOPped past its lease while B runs, then resumed: B reclaims the jobs,
    A's late completions are fenced or dropped, never recorded."""
    hist = History("S11b SIGSTOPped supervisor", chaos_seed)
    url = redis_server.url
    a = workers.start(url)
    b = workers.start(url)
    a_kids = await workers.wait_children(a)
    await workers.wait_children(b)
    hist.t0 = time.time()
    async with producer(url) as q, admin(redis_server) as r:
        await produce(hist, q, [f"j{i}" for i in range(40)], 0.4)
        await eventually(
            lambda: len(Ledger.read(ledger_dir).open_on(a_kids)) == 2, 10.0, "A busy", 0.005
        )
        a.send(signal.SIGSTOP)
        orphans = Ledger.read(ledger_dir).open_on(a_kids)
        hist.fault("SIGSTOP A", orphans)
        await anyio.sleep(3 * LEASE)
        a.send(signal.SIGCONT)
        record = await finish(hist, redis_server, ledger_dir, chaos_report)

        def settled() -> bool:
            log = a.log_text()
            return log.count("fenced") + log.count("lease lost") >= len(orphans)

        await eventually(settled, 10.0, "A to notice it lost its leases")
        fenced = int(await r.hget(KEYS.stats, "fenced") or 0)
    record["fenced"] = fenced
    record["a_log_lease_lost"] = a.log_text().count("lease lost")
    assert record["lost"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] <= len(orphans), summary(record)
    await _assert_recorded_elsewhere(hist, redis_server, orphans, a_kids)
    assert a.running and b.running


async def test_s9_slow_network(
    redis_server: RedisServer,
    workers: Workers,
    ledger_dir: Path,
    chaos_report: Report,
    chaos_seed: int,
    rng: random.Random,
) -> None:
    """40 ms ± 10 ms latency and 200 kB/s on every link: no lease is lost by mistake."""
    hist = History("S9 slow network", chaos_seed)
    with ThreadedFaultProxy("127.0.0.1", redis_server.port, seed=rng.randrange(1 << 30)) as proxy:
        proxy.latency(40, 10)
        proxy.bandwidth(200_000)
        w = workers.start(proxy.url)
        await workers.wait_children(w)
        hist.t0 = time.time()
        async with producer(proxy.url) as q:
            await produce(hist, q, [f"s{i}" for i in range(100)], 0.02)
            record = await finish(hist, redis_server, ledger_dir, chaos_report)
        proxy.heal()
    assert record["lost"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] == 0 and record["fenced"] == 0, summary(record)
    assert record["recovered"] == 0, summary(record)
    assert w.running
