"""aioqueue through Redis Sentinel (one master, one replica, three Sentinels, on loopback ports):
producers and workers use a ``redis+sentinel://`` URL; the master is SIGKILLed while jobs flow
and they carry on against the promoted replica without a restart. Replication is asynchronous,
so what the replica had not received is counted and reported; every job it holds completes,
each with one result.

The figures (time to resume, jobs lost) are printed at the end of the module's run.
"""

from __future__ import annotations

import json
import random
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from aioqueue import Call, Queue
from aioqueue.keys import Keys
from aioqueue.testing import RedisServer

from .chaos import harness
from .chaos.harness import Workers, summary
from .chaos.ledger_tasks import WORK
from .clusters import SentinelServers
from .failover import FIGURES, Flow, check_kept, fields, machine, outage, redis_version, show

pytestmark = [pytest.mark.chaos, pytest.mark.anyio, pytest.mark.timeout(300)]

SEED = 20241124
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines of figures, printed when the module is done."""
    harness.set_slowdown(harness.measure_slowdown())
    lines = [f"sentinel: 1 master + 1 replica, 3 Sentinels, Redis {redis_version()}; {machine()}"]
    yield lines
    show(request, lines)


@pytest.fixture
def sentinel() -> Iterator[SentinelServers]:
    """A fresh deployment per test: a test kills its master."""
    with SentinelServers(down_after_ms=1000, failover_timeout_ms=2000) as s:
        yield s


async def test_api_and_command_through_sentinel(sentinel: SentinelServers, tmp_path: Path) -> None:
    """Bulk submit, results, info and the aioqueue command on a Sentinel URL reach the master."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    workers = Workers(tmp_path, ledger, queue="sq")
    try:
        await workers.wait_children(workers.start(sentinel.url))
        async with Queue("sq", sentinel.url) as q:
            jobs = await q.submit_many(WORK, [Call(f"b{i}") for i in range(100)])
            values = [await j.result(timeout=harness.scaled(30)) for j in jobs]
            assert [v[0] for v in values] == [f"b{i}" for i in range(100)]
            assert (await q.info()).counters["completed"] == 100
        async with Redis(port=sentinel.master().port) as r:
            assert await r.hget(Keys("sq").stats, "completed") == b"100"
        argv = [sys.executable, "-m", "aioqueue.admin", "info", "sq", "--json"]
        out = await anyio.run_process([*argv, "--redis-url", sentinel.url], cwd=REPO, check=False)
        assert out.returncode == 0, out.stderr.decode()
        assert json.loads(out.stdout)
    finally:
        assert not workers.cleanup()


async def test_master_killed(
    sentinel: SentinelServers, tmp_path: Path, figures: list[str], request: pytest.FixtureRequest
) -> None:
    """SIGKILL the master while jobs flow on two queues: the Sentinels promote the replica, and
    the same producers and workers go on there; every job the new master holds completes."""
    rng = random.Random(SEED ^ zlib.crc32(request.node.nodeid.encode()))
    flow = Flow(sentinel.url, tmp_path, ["s0", "s1"], "sentinel master killed", SEED)
    async with flow.running():

        async def kill() -> RedisServer:
            old = sentinel.kill_master()
            return await anyio.to_thread.run_sync(sentinel.wait_failover, old)

        t_fault, took, new = await flow.through(kill, rng.uniform(0.5, 1.0), settle=2.0)
        records = await flow.finish(lambda keys: Redis(port=new.port, socket_timeout=10))
        assert flow.workers_alive()
    figures.append(f"sentinel master SIGKILL: every Sentinel named the replica in {took:.2f} s")
    for name, record in records.items():
        gap = outage(flow.lanes[name].ledger(), t_fault)
        figures.append(f"  {name}: {gap}, {fields(record, *FIGURES)}")
        check_kept(record)
        assert record["lost"] == record["lost_untraced"], summary(record)
        assert gap["starts_after"], gap
