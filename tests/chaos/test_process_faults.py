"""Chaos scenarios around processes: baseline, supervisor SIGKILL, child deaths, SIGTERM drain."""

from __future__ import annotations

import re
import signal
import time

import anyio
import pytest

from aioqueue import Call
from aioqueue.testing import RedisServer

from . import harness
from .harness import (
    KEYS,
    Scenario,
    admin,
    eventually,
    measure_slowdown,
    producer,
    recovery_bound_ms,
    scaled,
    signal_pid,
    submit_lanes,
    summary,
)
from .history import Fault, History
from .ledger_tasks import EXIT_HARD, KILL_SUPERVISOR, SEGFAULT, SUICIDE, WORK

pytestmark = [pytest.mark.chaos, pytest.mark.anyio]


async def submit_batch(hist: History, q: object, tags: list[str], *args: object) -> None:
    t = time.time()
    jobs = await q.submit_many(WORK, [Call(tag, *args) for tag in tags])  # type: ignore[attr-defined]
    hist.record_many(tags, jobs, t)


async def test_s0_baseline(redis_server: RedisServer, scenario: Scenario) -> None:
    """No faults: every job runs once and has exactly one result."""
    n = 2000
    hist = scenario.history("S0 baseline")
    with scenario.proxy(redis_server) as proxy:
        await scenario.worker(proxy.url)
        hist.t0 = time.time()
        async with producer(proxy.url) as q:
            await submit_lanes(hist, q, [f"b{i}" for i in range(n)], tries=1)
            record = await scenario.finish(hist, redis_server)
    assert record["acknowledged"] == n, summary(record)
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["dup_exec"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["completed"] == n and record["fenced"] == 0 and record["recovered"] == 0
    await scenario.workers.assert_no_orphans()


async def test_s1_supervisor_sigkill(redis_server: RedisServer, scenario: Scenario) -> None:
    """SIGKILL worker A's supervisor 3 times mid-run while worker B keeps going."""
    kills = 3
    hist = scenario.history("S1 supervisor SIGKILL")
    url = redis_server.url
    a, b = await scenario.pair(url, url)
    hist.t0 = time.time()
    inflight: list[int] = []
    killed: set[int] = set()  # the killed workers' children
    async with producer(url) as q:
        stop = anyio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                tags = [f"k{i + j}" for j in range(40)]
                i += 40
                await submit_batch(hist, q, tags, 0.02)
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            for _ in range(kills):
                await anyio.sleep(scenario.rng.uniform(0.3, 0.8))
                await eventually(
                    lambda a=a: scenario.ledger().open_on(a.children()), 3.0, "A busy", 0.005
                )
                t, kids = a.kill()
                killed.update(kids)
                await scenario.workers.assert_no_orphans()
                ledger = scenario.ledger()
                open_tags = ledger.open_on(kids)
                inflight.append(len(open_tags))
                hist.faults.append(Fault("supervisor SIGKILL", t, open_tags))
                await anyio.sleep(scenario.rng.uniform(0.0, 0.5))
                a = await scenario.worker(url)
            await anyio.sleep(0.5)
            stop.set()
        record = await scenario.finish(hist, redis_server)
    record["inflight_at_kills"] = inflight
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] <= sum(inflight) + kills * 2, summary(record)
    # a job runs again only where its run was cut short with its supervisor, or ended there
    # before its outcome was recorded: its first start was on a killed worker's child
    twice = {tag for tag, n in scenario.ledger().starts.items() if n > 1}
    assert twice <= scenario.ledger().started_on(killed), (sorted(twice), summary(record))
    rec_max = record["recovery_ms"]["max"]
    assert rec_max is None or rec_max <= recovery_bound_ms(1.0), record["recovery"]
    assert record["leftover"]["leases"] == 0 and record["leftover"]["tokens"] == 0
    assert b.running


def _interrupted(scenario: Scenario, kills: list[tuple[int, str]]) -> int:
    """How many kills cut their job short: its victim never wrote the job's end line."""
    ledger = scenario.ledger()
    return sum(1 for pid, tag in kills if tag in ledger.open_on([pid]))


async def test_s2a_child_sigkill(redis_server: RedisServer, scenario: Scenario) -> None:
    """SIGKILL a busy child 4 times: its job is retried and succeeds; the child is replaced."""
    hist = scenario.history("S2a child SIGKILL")
    w = await scenario.worker(redis_server.url)
    hist.t0 = time.time()
    kills: list[tuple[int, str]] = []  # (victim pid, the tag it was running)
    respawn_ms: list[float] = []
    async with producer(redis_server.url) as q:
        await submit_batch(hist, q, [f"c{i}" for i in range(24)], 0.25)
        for _ in range(12):  # 4 kills; more tries when a busy machine lets jobs end first
            if len(kills) >= 4 and _interrupted(scenario, kills):
                break
            await anyio.sleep(scenario.rng.uniform(0.1, 0.4))
            ledger = scenario.ledger()
            hit = {tag for _, tag in kills}
            busy = [
                (pid, tag)
                for pid in w.children()
                for tag in ledger.open_on([pid])
                if tag not in hit  # each job is shot at most once, so none runs out of attempts
            ]
            if not busy:
                continue
            victim, tag = scenario.rng.choice(busy)
            if not signal_pid(victim, signal.SIGKILL):
                continue  # the child exited (its job ended) since the ledger was read
            hist.fault("child SIGKILL", {tag})
            kills.append((victim, tag))

            def respawned(victim: int = victim) -> bool:
                kids = w.children()
                return len(kids) == 2 and victim not in kids

            respawn_ms.append(1000 * await eventually(respawned, 5.0, "a new child"))
        record = await scenario.finish(hist, redis_server)
    # a kill interrupted its job if the victim never wrote the job's end line (it may have
    # finished just before the signal landed)
    interrupted = _interrupted(scenario, kills)
    record["kills"] = len(kills)
    record["interrupted"] = interrupted
    record["respawn_ms_max"] = round(max(respawn_ms, default=0.0), 1)
    assert interrupted >= 1
    # no collateral failure: only the killed jobs were retried (a kill that landed between the
    # job's end and its reply may add one retry)
    assert interrupted <= record["retried"] <= len(kills), summary(record)
    assert record["lost"] == 0 and record["dead"] == 0, (summary(record), record["dlq_reasons"])
    assert record["dup_results"] == 0, summary(record)
    # a dead child is replaced within a second (on the reference machine; the margin is scaled
    # to this machine's measured speed)
    assert max(respawn_ms) <= 1000 * scaled(1.0)
    assert record["completed"] == 24
    assert interrupted <= record["dup_exec"] <= len(kills), summary(record)


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        (SUICIDE, "killed by SIGKILL"),
        (SEGFAULT, "killed by SIGSEGV"),
        (EXIT_HARD, "exited with code 3"),
    ],
    ids=["sigkill-self", "segfault", "exit-3"],
)
async def test_s2b_poison_child(
    redis_server: RedisServer, scenario: Scenario, task: str, reason: str
) -> None:
    """A task that kills its own child every time is dead-lettered after exactly 3 starts."""
    hist = scenario.history(f"S2b poison {task.rsplit('.', 1)[1]}")
    w = await scenario.worker(redis_server.url)
    hist.t0 = time.time()
    async with producer(redis_server.url) as q:
        good = [f"g{i}" for i in range(40)]
        await submit_batch(hist, q, good[:20], 0.01)
        await hist.submit("poison", q.submit(task, "poison"))
        await submit_batch(hist, q, good[20:], 0.01)
        record = await scenario.finish(hist, redis_server, multi_start=["poison"])
        dead = await q.dead_letters()
    ledger = scenario.ledger()
    assert ledger.starts["poison"] == 3
    assert [d.id for d in dead] == [hist.acked["poison"]]
    errors = dead[0].errors
    assert len(errors) == 3 and all(e.type == "ChildDied" and reason in e.message for e in errors)
    assert [e.attempt for e in errors] == [1, 2, 3]
    assert record["lost"] == 0 and record["dup_exec"] == 0 and record["dup_results"] == 0
    assert record["completed"] == 40 and record["dead"] == 1, summary(record)
    assert w.running


async def test_s2c_poison_kills_supervisor(redis_server: RedisServer, scenario: Scenario) -> None:
    """A task that SIGKILLs its supervisor every time: retried, then dead-lettered (WorkerLost)."""
    hist = scenario.history("S2c poison kills supervisor")
    url = redis_server.url
    w = await scenario.worker(url)
    hist.t0 = time.time()
    deaths = 0
    async with producer(url) as q:
        await submit_batch(hist, q, [f"g{i}" for i in range(10)], 0.01)
        await hist.submit("poison", q.submit(KILL_SUPERVISOR, "poison"))
        await submit_batch(hist, q, [f"h{i}" for i in range(10)], 0.01)
        # each supervisor death costs a restart and a lease expiry: the wait is scaled to the
        # machine's speed, and starts over at each death seen (progress)
        limit = scaled(10)
        deadline = time.monotonic() + limit
        async with admin(redis_server) as r:
            while await r.zscore(KEYS.dead, hist.acked["poison"]) is None:
                assert time.monotonic() < deadline, f"poison job not dead-lettered ({deaths=})"
                if not w.running:
                    deaths += 1
                    await scenario.workers.assert_no_orphans()
                    hist.fault("supervisor killed by its task", ["poison"])
                    w = await scenario.worker(url)
                    deadline = time.monotonic() + limit
                await anyio.sleep(0.05)
        record = await scenario.finish(hist, redis_server, multi_start=["poison"])
        dead = await q.dead_letters()
    record["supervisor_deaths"] = deaths
    ledger = scenario.ledger()
    assert ledger.starts["poison"] == 2 and deaths == 2
    assert len(dead) == 1 and [e.type for e in dead[0].errors] == ["WorkerLost", "WorkerLost"]
    assert record["lost"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] <= 2 * deaths, summary(record)
    assert record["completed"] == 20


_STOPPED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO +aioqueue\.worker: worker \S+ stopped", re.M
)


def stopped_at(log: str) -> float | None:
    """When the worker logged that it stopped (its drain over; the process exits next)."""
    found = _STOPPED.search(log)
    if found is None:
        return None
    return time.mktime(time.strptime(found[1], "%Y-%m-%d %H:%M:%S")) + int(found[2]) / 1000


async def test_s3_sigterm_drain(redis_server: RedisServer, scenario: Scenario) -> None:
    """SIGTERM mid-run: no fetch after the signal, short jobs finish, long ones are handed back
    (attempt not counted) when the grace ends, exit code 0; a second worker finishes the rest."""
    grace = 1.5
    hist = scenario.history("S3 SIGTERM drain")
    url = redis_server.url
    w = await scenario.worker(url, grace=grace, log_level="info")  # its stop is logged
    hist.t0 = time.time()
    async with producer(url) as q, admin(redis_server) as r:
        # the two long jobs go first (priority) so that both children hold one at the signal
        for i in range(2):
            await hist.submit(
                f"long{i}", q.options(priority=10).submit(WORK, f"long{i}", 30.0, 0, True)
            )
        await submit_batch(hist, q, [f"s{i}" for i in range(30)], 0.2)
        long_ids = [hist.acked["long0"], hist.acked["long1"]]

        async def both_running() -> bool:
            ledger = scenario.ledger()
            leased = [await r.zscore(KEYS.leases, jid) is not None for jid in long_ids]
            return ledger.starts["long0"] >= 1 and ledger.starts["long1"] >= 1 and all(leased)

        await eventually(
            both_running, 10.0, "both long jobs running", progress=scenario.ledger_size
        )
        t_sig = w.send(signal.SIGTERM)

        async def released() -> bool:
            return all([await r.zscore(KEYS.pending, jid) is not None for jid in long_ids])

        # grace is the product's promise; the margins after it are scaled to the machine's speed
        await eventually(released, grace / scaled(1.0) + 3.0, "long jobs handed back", 0.01)
        t_released = time.time()
        code = await anyio.to_thread.run_sync(w.wait, grace + scaled(5.0))
        t_exit = time.time()
        log = w.log_text()
        assert code == 0, log
        # the drain (the product's promise) ends within the grace and a margin; the process
        # exit after it is the interpreter's teardown, bounded by the wait above. Both margins
        # take the machine's speed now as well as at the start (it may have got busy since).
        stopped = stopped_at(log)
        assert stopped is not None, log
        slowdown = max(harness.SLOWDOWN, measure_slowdown())
        phases = {
            "handed back": round(t_released - t_sig, 3),
            "drain ended": round(stopped - t_sig, 3),
            "exited": round(t_exit - t_sig, 3),
            "slowdown": round(slowdown, 2),
        }
        assert stopped - t_sig <= grace + 2.0 * slowdown, f"{phases}\n{log}"
        leases = await r.zcard(KEYS.leases)
        attempts = [await r.hget(KEYS.attempts, hist.acked[f"long{i}"]) for i in range(2)]
        pending_long = [await r.zscore(KEYS.pending, hist.acked[f"long{i}"]) for i in range(2)]
        ledger = scenario.ledger()
        late = ledger.starts_after(t_sig + 0.05)
        await scenario.worker(url)
        record = await scenario.finish(hist, redis_server)
    record["drain_s_after_sigterm"] = round(t_exit - t_sig, 2)
    record["released_ms_after_grace"] = round((t_released - t_sig - grace) * 1000, 1)
    assert record["released_ms_after_grace"] <= 1000 * scaled(1.0)
    assert leases == 0, "leases left to expire after a graceful stop"
    assert attempts == [b"0", b"0"], f"released attempts were counted: {attempts}"
    assert None not in pending_long
    assert not late, f"jobs started after SIGTERM: {late}"
    assert record["lost"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] == 2, summary(record)
    assert set(record["details"]["dup_tags"]) == {"long0", "long1"}
