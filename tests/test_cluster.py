"""aioqueue on a real Redis Cluster (3 masters, 3 replicas, on loopback ports): queues spread
over the masters, and jobs keep flowing through a manual failover, a slot moved while in use and
a master killed. Every job Redis kept completes, each with one result; what an asynchronous
replica missed when its master was killed is counted and reported, not hidden.

The figures of each scenario are printed at the end of the module's run.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from aioqueue import Call, Queue
from aioqueue.keys import Keys

from .chaos import harness
from .chaos.harness import Workers, eventually, summary
from .chaos.ledger_tasks import FAIL_FIRST, WORK
from .clusters import ClusterServers
from .failover import FIGURES, Flow, check_kept, fields, machine, outage, redis_version, show

pytestmark = [pytest.mark.chaos, pytest.mark.anyio, pytest.mark.timeout(300)]

SEED = 20241124
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterServers]:
    """One cluster for the module; each scenario leaves it settled, every node back."""
    harness.set_slowdown(harness.measure_slowdown())
    with ClusterServers(masters=3, replicas=1) as c:
        yield c


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines of figures, printed when the module is done."""
    lines = [f"cluster: 3 masters + 3 replicas, Redis {redis_version()}; {machine()}"]
    yield lines
    show(request, lines)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(SEED ^ zlib.crc32(request.node.nodeid.encode()))


def spread(cluster: ClusterServers, prefix: str) -> list[str]:
    """One queue name per master (each test its own): names whose hash-tagged keys fall on each
    master's slots."""
    names: dict[int, str] = {}
    masters = {m.port for m in cluster.masters()}
    i = 0
    while len(names) < len(masters):
        name = f"{prefix}{i}"
        i += 1
        port = cluster.owner(key_slot(Keys(name).jobs.encode())).port
        names.setdefault(port, name)
    return list(names.values())


def admin(cluster: ClusterServers) -> Any:
    """``admin(keys)``: a plain client of the master that holds those keys now."""

    def make(keys: Keys) -> Redis:
        port = cluster.owner(cluster.keyslot(keys.jobs)).port
        return Redis(host="127.0.0.1", port=port, socket_timeout=10)

    return make


async def test_queues_spread_over_the_masters(
    cluster: ClusterServers, tmp_path: Path, figures: list[str]
) -> None:
    """Queues of different names live on different masters (CLUSTER KEYSLOT, CLUSTER NODES),
    and jobs flow through all of them at once: each job once, each result once."""
    names = spread(cluster, "base")
    owners = {cluster.owner(cluster.keyslot(Keys(n).jobs)).port for n in names}
    assert len(owners) == len(names) >= 2, (names, owners)
    for n in names:  # every key of a queue shares its slot
        assert {cluster.keyslot(k) for k in (Keys(n).jobs, Keys(n).wake, Keys(n).result("x"))} == {
            cluster.keyslot(Keys(n).jobs)
        }
    flow = Flow(cluster.url, tmp_path, names, "cluster baseline", SEED)
    async with flow.running():
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(flow.produce, stop)
            await flow.warmed()
            await anyio.sleep(2.0)
            stop.set()
        records = await flow.finish(admin(cluster))
    for name, record in records.items():
        figures.append(f"cluster baseline {name}: {fields(record, *FIGURES)}")
        assert record["lost"] == 0 and record["dup_exec"] == 0, summary(record)
        check_kept(record)
        assert record["results_awaited"] > 0 and record["result_wait_errors"] == 0


async def test_api_and_command_on_a_cluster(cluster: ClusterServers, tmp_path: Path) -> None:
    """Bulk submit, results, info, pause and resume, dead letters and their requeue, and the
    aioqueue command, on a cluster URL."""
    name = spread(cluster, "api")[1]
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    workers = Workers(tmp_path, ledger, queue=name)
    try:
        await workers.wait_children(workers.start(cluster.url))
        async with Queue(name, cluster.url) as q:
            jobs = await q.submit_many(WORK, [Call(f"b{i}") for i in range(300)])
            values = [await j.result(timeout=harness.scaled(30)) for j in jobs]
            assert [v[0] for v in values] == [f"b{i}" for i in range(300)]
            cluster.flush_scripts()  # as after a failover to a node that never loaded them
            job = await q.submit(WORK, "after flush")
            assert (await job.result(timeout=harness.scaled(10)))[0] == "after flush"
            await q.pause()
            assert await q.paused() and (await q.info()).paused
            held = await q.submit(WORK, "held")
            await anyio.sleep(0.3)  # a paused queue leases nothing: still pending after a while
            assert await held.status() == "pending"
            await q.resume()
            assert (await held.result(timeout=harness.scaled(10)))[0] == "held"
            bad = await q.submit(FAIL_FIRST, "f1")

            async def dead() -> bool:
                return [d.id for d in await q.dead_letters()] == [bad.id]

            await eventually(dead, 10.0, "the dead letter")
            assert await q.requeue_dead([bad.id]) == 1
            assert (await bad.result(timeout=harness.scaled(10)))[0] == "f1"
            info = await q.info()
            assert info.workers == 1 and info.dead == 0 and info.counters["completed"] == 303
        argv = [sys.executable, "-m", "aioqueue.admin", "info", name, "--json"]
        out = await anyio.run_process([*argv, "--redis-url", cluster.url], cwd=REPO, check=False)
        assert out.returncode == 0, out.stderr.decode()
        assert name.encode() in out.stdout and json.loads(out.stdout)
    finally:
        assert not workers.cleanup()


async def test_commands_beyond_max_connections_wait(cluster: ClusterServers) -> None:
    """More commands at once than max_connections wait for a free connection (as with one
    server) instead of failing with MaxConnectionsError, and no node gets more connections."""
    name = spread(cluster, "mc")[0]
    async with Queue(name, cluster.url, max_connections=3) as q:
        keys = Keys(name)
        pops = [q.redis.blpop([keys.wake], timeout=0.2) for _ in range(12)]
        start = time.monotonic()
        assert await asyncio.gather(*pops) == [None] * 12
        assert time.monotonic() - start >= 0.2 * 12 / 3
        node = q.redis.get_node_from_key(keys.wake)  # type: ignore[attr-defined]
        assert len(node._connections) <= 3


async def test_manual_failover_loses_nothing(
    cluster: ClusterServers, tmp_path: Path, figures: list[str], rng: random.Random
) -> None:
    """CLUSTER FAILOVER on the replica of a queue's master while jobs flow: the replica catches
    up before it takes over, so nothing is lost; work resumes on the new master."""
    names = spread(cluster, "fo")
    victim = names[0]
    master = cluster.owner(cluster.keyslot(Keys(victim).jobs))
    replica = cluster.replicas_of(master)[0]
    flow = Flow(cluster.url, tmp_path, names, "cluster manual failover", SEED)
    async with flow.running():
        t_fault, took, _ = await flow.through(
            lambda: anyio.to_thread.run_sync(cluster.failover, replica), rng.uniform(0.6, 1.2)
        )
        assert cluster.owner(cluster.keyslot(Keys(victim).jobs)) is replica
        records = await flow.finish(admin(cluster))
        assert flow.workers_alive()
    figures.append(f"cluster manual failover: roles changed everywhere in {took:.2f} s")
    for name, record in records.items():
        gap = outage(flow.lanes[name].ledger(), t_fault)
        figures.append(f"  {name}{' (its master failed over)' * (name == victim)}: {gap}, "
                       f"{fields(record, *FIGURES)}")  # fmt: skip
        assert record["lost"] == 0, summary(record)
        check_kept(record)


async def test_slot_moved_while_in_use(
    cluster: ClusterServers, tmp_path: Path, figures: list[str], rng: random.Random
) -> None:
    """A queue's slot migrates to another master (MIGRATE in small batches) while its jobs
    flow: MOVED and ASK replies re-route the commands, TRYAGAIN ones are retried; nothing lost,
    nothing run twice."""
    names = spread(cluster, "mv")
    victim = names[1]
    slot = cluster.keyslot(Keys(victim).jobs)
    source = cluster.owner(slot)
    target = next(m for m in cluster.masters() if m is not source)
    flow = Flow(cluster.url, tmp_path, names, "cluster slot moved", SEED)
    async with flow.running():
        before = cluster.redirects()
        t_fault, took, moved = await flow.through(
            lambda: anyio.to_thread.run_sync(cluster.move_slot, slot, target, 10),
            rng.uniform(1.0, 1.5),
        )
        after = cluster.redirects()
        assert cluster.owner(slot) is target
        records = await flow.finish(admin(cluster))
        assert flow.workers_alive()
    replies = {k: after.get(k, 0) - before.get(k, 0) for k in ("MOVED", "ASK", "TRYAGAIN")}
    figures.append(f"cluster slot move: {moved} keys in {took:.2f} s; replies sent: {replies}")
    for name, record in records.items():
        gap = outage(flow.lanes[name].ledger(), t_fault)
        figures.append(f"  {name}{' (its slot moved)' * (name == victim)}: {gap}, "
                       f"{fields(record, *FIGURES)}")  # fmt: skip
        assert record["lost"] == 0, summary(record)
        check_kept(record)
    assert replies["MOVED"] > 0, replies


async def test_master_killed(
    cluster: ClusterServers, tmp_path: Path, figures: list[str], rng: random.Random
) -> None:
    """SIGKILL the master of a queue's slot while jobs flow; its replica takes over. Replication
    is asynchronous, so the last acknowledged writes may be gone with it: those are counted and
    reported. Every job the new master holds completes, with one result; the other masters'
    queues lose nothing."""
    names = spread(cluster, "kill")
    victim = names[2]
    slot = cluster.keyslot(Keys(victim).jobs)
    master = cluster.owner(slot)
    flow = Flow(cluster.url, tmp_path, names, "cluster master killed", SEED)
    async with flow.running():

        async def kill() -> None:
            master.kill()
            await anyio.to_thread.run_sync(cluster.wait_stable)

        t_fault, took, _ = await flow.through(kill, rng.uniform(0.6, 1.2))
        assert cluster.owner(slot) is not master
        records = await flow.finish(admin(cluster))
        assert flow.workers_alive()
    figures.append(f"cluster master SIGKILL: a replica owned its slots everywhere in {took:.2f} s")
    for name, record in records.items():
        gap = outage(flow.lanes[name].ledger(), t_fault)
        figures.append(f"  {name}{' (its master killed)' * (name == victim)}: {gap}, "
                       f"{fields(record, *FIGURES)}")  # fmt: skip
        check_kept(record)
        if name != victim:
            assert record["lost"] == 0, summary(record)
        else:  # lost only what the replica never received
            assert record["lost"] == record["lost_untraced"], summary(record)
    master.start()  # it rejoins as a replica of its successor
    await anyio.to_thread.run_sync(cluster.wait_stable)
