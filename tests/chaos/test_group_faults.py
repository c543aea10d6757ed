"""Chaos scenario around per-key concurrency: a group's limit holds while workers are SIGKILLed.

A job of a group holds one of the group's slots from the moment it is let into pending until its
final outcome (README, "Per-key concurrency"). When a worker's supervisor is SIGKILLed its
children die with it (``PR_SET_PDEATHSIG``), so the runs it had stop at once, and each of its
jobs keeps its slot until its lease expires, it is recovered and its rerun ends. The ledger's
runs of one group must therefore never overlap more than ``group_limit`` deep, a killed run
counting as running until the moment its process was seen dead; and no slot may leak: every
job finishes, and the group bookkeeping is empty once the queue is done.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from aioqueue import Call
from aioqueue.testing import RedisServer

from .harness import KEYS, Scenario, WorkerProc, admin, eventually, producer, summary
from .history import Ledger
from .ledger_tasks import WORK

pytestmark = [pytest.mark.chaos, pytest.mark.anyio]

GROUPS = ("ga", "gb", "gc")
LIMIT = 2
JOBS = 200
COST = 0.15  # seconds each job sleeps: kills land mid-run, and the work outlasts the kills
KILLS = 4
PROCESSES = 3  # 3 workers of 3 children: 9 children for 6 slots, so the limit is what binds
RETRIES = 20  # more than the kills: no job runs out of attempts because of them


@dataclass(frozen=True)
class Run:
    """One start of a job in the ledger, until its end line, or until its child was killed."""

    tag: str
    pid: int
    start: float
    end: float
    killed: bool

    @property
    def group(self) -> str:
        return self.tag.split(".", 1)[0]


def runs_of(ledger: Ledger, killed_at: dict[int, float]) -> list[Run]:
    """Every run in the ledger; a run with a start and no end must have been on a killed child
    (``killed_at``: child pid -> when it was seen dead), and ends then."""
    runs: list[Run] = []
    started: dict[tuple[int, str], float] = {}
    for e in ledger.entries:
        if e.kind == "start":
            assert (e.pid, e.tag) not in started, f"{e.tag} started twice on child {e.pid}"
            started[(e.pid, e.tag)] = e.t
        else:
            t0 = started.pop((e.pid, e.tag), None)
            assert t0 is not None, f"{e.tag} ended on child {e.pid} without a start"
            runs.append(Run(e.tag, e.pid, t0, e.t, killed=False))
    for (pid, tag), t0 in started.items():
        assert pid in killed_at, f"{tag} never ended on child {pid}, which was not killed"
        runs.append(Run(tag, pid, t0, killed_at[pid], killed=True))
    return runs


def deepest(runs: list[Run]) -> tuple[int, list[Run]]:
    """The most runs at once among ``runs``, and the runs of the first moment it was reached
    (an end and a start at the same instant do not overlap)."""
    events = sorted([(r.start, 1, r) for r in runs] + [(r.end, -1, r) for r in runs],
                    key=lambda e: (e[0], e[1]))  # fmt: skip
    now: set[Run] = set()
    best: tuple[int, list[Run]] = (0, [])
    for _, delta, run in events:
        if delta > 0:
            now.add(run)
            if len(now) > best[0]:
                best = (len(now), sorted(now, key=lambda r: r.start))
        else:
            now.discard(run)
    return best


async def test_s1b_group_limit_under_supervisor_sigkill(
    redis_server: RedisServer, scenario: Scenario
) -> None:
    """200 jobs in 3 groups of limit 2 on 3 workers; a random busy worker is SIGKILLed 4 times
    and replaced. Every job completes, no group ever runs more than 2 at once, and no slot
    leaks."""
    hist = scenario.history("S1b group limit under SIGKILL")
    url = redis_server.url
    live: list[WorkerProc] = []
    for _ in range(3):
        live.append(scenario.workers.start(url, processes=PROCESSES))
    owner: dict[int, str] = {}  # child pid -> its worker, for the failure messages
    for w in live:
        for pid in await scenario.workers.wait_children(w, PROCESSES):
            owner[pid] = w.name
    killed_at: dict[int, float] = {}  # child pid -> when it was seen dead
    interrupted: list[int] = []  # per kill: the runs it cut short
    kill_s: list[float] = []  # per kill: seconds after the submits
    hist.t0 = time.time()
    async with producer(url) as q, admin(redis_server) as r:
        tags = [f"{GROUPS[i % len(GROUPS)]}.{i}" for i in range(JOBS)]
        for group in GROUPS:
            mine = [tag for tag in tags if tag.startswith(group + ".")]
            submitter = q.options(group=group, group_limit=LIMIT, retries=RETRIES)
            t = time.time()
            jobs = await submitter.submit_many(WORK, [Call(tag, COST) for tag in mine])
            hist.record_many(mine, jobs, t)

        ids = list(hist.acked.values())

        async def finished() -> int:
            return int(await r.exists(*[KEYS.result(jid) for jid in ids]))

        async def all_finished() -> bool:
            return await finished() == len(ids)

        async def groups_state() -> dict[str, Any]:
            return {
                "gactive": await r.hgetall(KEYS.gactive),
                "glimit": await r.hgetall(KEYS.glimit),
                "waiting": {g: await r.llen(KEYS.gq(g)) for g in GROUPS},
                "pending": await r.zcard(KEYS.pending),
                "leases": await r.zcard(KEYS.leases),
            }

        async def wait(
            condition: Callable[[], Any], timeout: float, what: str, interval: float
        ) -> None:
            """Wait while the ledger grows; failing, say how far the jobs got and why."""
            try:
                await eventually(condition, timeout, what, interval, progress=scenario.ledger_size)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {await finished()} of {len(ids)} jobs finished; "
                                     f"{await groups_state()}") from None  # fmt: skip

        for _ in range(KILLS):
            await anyio.sleep(scenario.rng.uniform(0.2, 0.6))

            def busy() -> list[WorkerProc]:
                ledger = scenario.ledger()
                return [w for w in live if ledger.open_on(w.children())]

            await wait(busy, 5.0, "a busy worker", 0.005)
            victim = scenario.rng.choice(busy() or live)
            t_kill, kids = victim.kill()
            await scenario.workers.assert_no_orphans()
            t_dead = time.time()
            for pid in kids:
                killed_at[pid] = t_dead
                owner.setdefault(pid, victim.name)
            cut = scenario.ledger().open_on(kids)
            interrupted.append(len(cut))
            kill_s.append(round(t_kill - hist.t0, 2))
            hist.fault("supervisor SIGKILL", cut, dead_ms=round((t_dead - t_kill) * 1000, 1))
            live.remove(victim)
            fresh = scenario.workers.start(url, processes=PROCESSES)
            live.append(fresh)
            for pid in await scenario.workers.wait_children(fresh, PROCESSES):
                owner[pid] = fresh.name

        # no deadline while jobs finish; a group whose slots leaked stalls, and fails here
        await wait(all_finished, 10.0, "every job finished", 0.05)
        record = await scenario.finish(hist, redis_server)
        leftover = await groups_state()

    runs = runs_of(scenario.ledger(), killed_at)
    record["interrupted_at_kills"] = interrupted
    record["kill_s"] = kill_s
    record["last_end_s"] = round(max(run.end for run in runs) - hist.t0, 2)
    # a killed run and its rerun never overlap: the rerun starts after the lease expired, and
    # the lease of a live worker never expires (else fenced counts the late completion)
    by_tag: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_tag[run.tag].append(run)
    for tag, again in by_tag.items():
        again.sort(key=lambda x: x.start)
        for a, b in itertools.pairwise(again):
            assert a.end <= b.start, (f"{tag} ran twice at once: {again}", summary(record))
    depth: dict[str, int] = {}
    for group in GROUPS:
        n, at = deepest([run for run in runs if run.group == group])
        depth[group] = n
        assert n <= LIMIT, f"group {group} ran {n} jobs at once (limit {LIMIT}): " + ", ".join(
            f"{x.tag} on {owner.get(x.pid, '?')}/{x.pid} {x.start:.3f}-{x.end:.3f}"
            + (" (killed)" if x.killed else "")
            for x in at
        )
    record["group_depth"] = depth
    # the limit was reached in every group: the check above could have seen it exceeded
    assert all(n == LIMIT for n in depth.values()), depth
    killed = sum(1 for run in runs if run.killed)
    assert killed >= 1 and record["recovered"] >= 1, (interrupted, summary(record))
    assert record["dup_exec"] >= killed, summary(record)  # each killed run was run again
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["dead"] == 0, (summary(record), record["dlq_reasons"])
    assert record["completed"] == JOBS and record["dup_results"] == 0, summary(record)
    assert sorted(by_tag) == sorted(tags), "a job completed without a run in the ledger"
    # every slot was given back, and nothing waits in a group's list
    assert leftover["gactive"] == {} and leftover["glimit"] == {}, leftover
    assert all(n == 0 for n in leftover["waiting"].values()), leftover
