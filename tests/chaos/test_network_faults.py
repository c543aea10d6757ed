"""Chaos scenarios on the network between aioqueue and Redis (through the fault proxy), and the
paused supervisor: dropped replies after apply, a blackholed worker, SIGSTOP, a slow link."""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec
import pytest

from aioqueue import Queue, wire
from aioqueue.testing import RedisServer

from .harness import (
    KEYS,
    LEASE,
    Scenario,
    admin,
    eventually,
    keyed_submit,
    producer,
    queue_progress,
    recovery_bound_ms,
    submit_lanes,
    summary,
)
from .history import History, snapshot
from .ledger_tasks import FAIL_FIRST, WORK_ONCE
from .proxy import SCRIPTS

_T = TypeVar("_T")


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


pytestmark = [pytest.mark.chaos, pytest.mark.anyio]


@pytest.mark.parametrize(
    ("script", "p"),
    [("submit", 0.2), ("claim", 0.15), ("finish", 0.2), ("heartbeat", 0.3)],
)
async def test_s7_drop_reply_after_apply(
    redis_server: RedisServer, scenario: Scenario, script: str, p: float
) -> None:
    """Replies to one script are dropped after Redis applied it (the connection is reset):
    no duplicate job, no duplicate result, no job run twice, nothing lost."""
    hist = scenario.history(f"S7 drop reply: {script}")
    with scenario.proxy(redis_server) as proxy:
        w = await scenario.worker(proxy.url)
        hist.t0 = time.time()
        async with producer(proxy.url, redis_retries=3) as q:
            proxy.drop_reply(p, match=q.scripts.sha(script))
            await submit_lanes(hist, q, [f"d{i}" for i in range(150)], 0.005)
            await anyio.sleep(1.0 if script == "heartbeat" else 0.0)
            record = await scenario.finish(hist, redis_server)
            record["dropped_replies"] = proxy.dropped_replies
            proxy.heal()
    assert record["dropped_replies"] > 0
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["duplicate_jobs"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] == 0, summary(record)
    assert w.running


async def _cut_off_a(
    scenario: Scenario,
    hist: History,
    q: Queue,
    a_kids: list[int],
    fault: str,
    *,
    stop: Callable[[], object],
    resume: Callable[[], object],
) -> set[str]:
    """Submit 40 jobs of 0.4 s; once both of A's children (``a_kids``) run one, cut A off with
    ``stop``, record the fault, and ``resume`` A 3 leases later. Returns the tags A held."""
    await submit_lanes(hist, q, [f"j{i}" for i in range(40)], 0.4)
    await eventually(
        lambda: len(scenario.ledger().open_on(a_kids)) == 2,
        10.0,
        "A busy",
        0.005,
        progress=scenario.ledger_size,
    )
    stop()
    orphans = scenario.ledger().open_on(a_kids)
    hist.fault(fault, orphans)
    await anyio.sleep(3 * LEASE)
    resume()
    return orphans


async def test_s8_blackholed_worker(redis_server: RedisServer, scenario: Scenario) -> None:
    """Worker A's link is blackholed for 3 leases while worker B runs: B reclaims A's jobs, and
    A's late completions are fenced (counted, never recorded)."""
    hist = scenario.history("S8 blackholed worker")
    with scenario.proxy(redis_server) as proxy:
        a, b = await scenario.pair(proxy.url, redis_server.url)
        a_kids = a.children()
        hist.t0 = time.time()
        async with producer(redis_server.url) as q:
            orphans = await _cut_off_a(
                scenario, hist, q, a_kids, "blackhole A", stop=proxy.blackhole, resume=proxy.heal
            )
            record = await scenario.finish(hist, redis_server)
            ledger = scenario.ledger()
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
    # the blackhole lasts 3 leases; B takes A's jobs over within lease + maintenance of it
    # starting, plus a margin scaled to the machine's measured speed
    bound = recovery_bound_ms(3 * LEASE - 1.2)
    for rec in record["recovery"]:
        assert rec["recovery_ms"] is not None and rec["recovery_ms"] <= bound, record["recovery"]
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


async def test_s11b_sigstopped_supervisor(redis_server: RedisServer, scenario: Scenario) -> None:
    """Supervisor A is SIGSTOPped past its lease while B runs, then resumed: B reclaims the jobs,
    A's late completions are fenced or dropped, never recorded."""
    hist = scenario.history("S11b SIGSTOPped supervisor")
    url = redis_server.url
    a, b = await scenario.pair(url, url)
    a_kids = a.children()
    hist.t0 = time.time()
    async with producer(url) as q, admin(redis_server) as r:
        orphans = await _cut_off_a(
            scenario,
            hist,
            q,
            a_kids,
            "SIGSTOP A",
            stop=lambda: a.send(signal.SIGSTOP),
            resume=lambda: a.send(signal.SIGCONT),
        )
        record = await scenario.finish(hist, redis_server)

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


async def test_s9_slow_network(redis_server: RedisServer, scenario: Scenario) -> None:
    """40 ms ± 10 ms latency and 200 kB/s on every link: no lease is lost by mistake."""
    hist = scenario.history("S9 slow network")
    with scenario.proxy(redis_server, scenario.rng.randrange(1 << 30)) as proxy:
        proxy.latency(40, 10)
        proxy.bandwidth(200_000)
        w = await scenario.worker(proxy.url)
        hist.t0 = time.time()
        async with producer(proxy.url) as q:
            await submit_lanes(hist, q, [f"s{i}" for i in range(100)], 0.02)
            record = await scenario.finish(hist, redis_server)
        proxy.heal()
    assert record["lost"] == 0 and record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] == 0 and record["fenced"] == 0, summary(record)
    assert record["recovered"] == 0, summary(record)
    assert w.running


async def _retrying(call: Callable[[], Awaitable[_T]], what: str) -> _T:
    """Await ``call()`` again when it raises (every try's reply lost); the last value counts."""
    for _ in range(9):
        try:
            return await call()
        except Exception:
            await anyio.sleep(0.05)
    return await call()


async def test_s7b_drop_reply_every_script(redis_server: RedisServer, scenario: Scenario) -> None:
    """A quarter of the replies to every script call, the worker's and the producer's, are
    dropped after Redis applied the call; tasks have no retries. There is no worker fault, so
    nothing may be recovered or fenced, no job may be dead-lettered without having run, every
    job's attempts must equal its starts, and cancel, requeue_dead and purge_dead must report
    exactly what they did."""
    p = 0.25
    hist = scenario.history("S7b drop reply: every script")
    work = [f"w{i}" for i in range(200)]
    fail = [f"f{i}" for i in range(36)]  # dead at their first start; 12 requeued, 12 purged
    delayed = [f"d{i}" for i in range(30)]  # never due during the run; all cancelled
    requeue, purge = fail[:12], fail[12:24]
    with scenario.proxy(redis_server, scenario.rng.randrange(1 << 30)) as proxy:
        w = await scenario.worker(proxy.url)
        hist.t0 = time.time()
        # the client re-sends a call up to 8 times (its receipt answers each re-send): a call
        # whose every re-send is dropped (0.25 ** 9) would end in an error the caller must retry
        # as a new call, which can't know what the first one did
        async with producer(proxy.url, redis_retries=8) as q, admin(redis_server) as r:
            proxy.drop_reply(p, match=SCRIPTS)
            for tag in delayed:
                await keyed_submit(hist, q, tag, WORK_ONCE, delay=600)
            jobs = [(tag, WORK_ONCE, 0.005) for tag in work] + [(tag, FAIL_FIRST) for tag in fail]
            scenario.rng.shuffle(jobs)

            async def lane(k: int) -> None:
                for tag, task, *args in jobs[k::4]:
                    await keyed_submit(hist, q, tag, task, *args)

            # cancel the delayed jobs while the others run: half one by one, half in fives
            cancelled: dict[str, bool] = {}

            async def cancel_delayed() -> None:
                for tag in delayed[:15]:
                    job = q.job(hist.acked[tag])
                    cancelled[tag] = await _retrying(job.cancel, f"cancel {tag}")
                for i in range(15, 30, 5):
                    tags = delayed[i : i + 5]
                    ids = [hist.acked[t] for t in tags]
                    answers = await _retrying(lambda ids=ids: q.cancel(ids), "cancel")
                    cancelled.update(zip(tags, answers, strict=True))

            async with anyio.create_task_group() as tg:
                for k in range(4):
                    tg.start_soon(lane, k)
                tg.start_soon(cancel_delayed)

            fail_ids = [hist.acked[tag] for tag in fail]

            async def all_failed() -> bool:
                return all([await r.zscore(KEYS.dead, jid) is not None for jid in fail_ids])

            await eventually(all_failed, 10.0, "the failing jobs dead-lettered",
                             progress=lambda: queue_progress(r))  # fmt: skip
            # every dead letter so far, with its errors, before requeue and purge move some
            dead_seen = {
                _s(jid): wire.decode_errors(data)
                for jid, data in (await r.hgetall(KEYS.errors)).items()
                if await r.zscore(KEYS.dead, jid) is not None
            }
            starts_then = scenario.ledger().starts
            requeue_returned = requeue_moved = purge_returned = purge_moved = 0
            for tag in requeue:
                jid = hist.acked[tag]
                was_dead = await r.zscore(KEYS.dead, jid) is not None
                requeue_returned += await _retrying(lambda j=jid: q.requeue_dead([j]), "requeue")
                requeue_moved += int(was_dead and await r.zscore(KEYS.dead, jid) is None)
            for tag in purge:
                jid = hist.acked[tag]
                was_dead = await r.zscore(KEYS.dead, jid) is not None
                purge_returned += await _retrying(lambda j=jid: q.purge_dead([j]), "purge")
                gone = await r.zscore(KEYS.dead, jid) is None and not await r.hexists(
                    KEYS.jobs, jid
                )
                purge_moved += int(was_dead and gone)
            record = await scenario.finish(
                hist, redis_server, multi_start=requeue, requeued=len(requeue)
            )
            # cancelling a finished job does nothing
            for tag in work[:10]:
                cancelled[tag] = await _retrying(q.job(hist.acked[tag]).cancel, f"cancel {tag}")
            snap = await snapshot(r, KEYS)
            stats = {_s(k): int(v) for k, v in (await r.hgetall(KEYS.stats)).items()}
        record["dropped_replies"] = proxy.dropped_replies
        proxy.heal()
    ledger = scenario.ledger()
    tag_of = {jid: tag for tag, jid in hist.acked.items()}
    starts_at_death = {jid: starts_then[tag_of.get(jid, "")] for jid in dead_seen}
    for jid in snap.dead:
        dead_seen[jid] = snap.errors.get(jid, [])
        starts_at_death[jid] = ledger.starts[tag_of.get(jid, "")]
    dead_not_run = sorted(tag_of.get(j, j) for j, n in starts_at_death.items() if n == 0)
    dead_lost = sorted(
        tag_of.get(j, j) for j, errs in dead_seen.items() if any(e.kind == "lost" for e in errs)
    )
    # attempts recorded == starts in the ledger (a requeue starts the count again)
    attempts_off: dict[str, tuple[int, int]] = {}
    for jid, out in snap.results.items():
        tag = tag_of.get(jid)
        if tag is None or out.cancelled:
            continue
        starts = ledger.starts[tag] - (starts_then[tag] if tag in requeue else 0)
        if out.attempts != starts:
            attempts_off[tag] = (out.attempts, starts)
    for jid, errs in dead_seen.items():
        tag = tag_of.get(jid, jid)
        if len(errs) != starts_at_death[jid] and tag not in attempts_off:
            attempts_off[tag] = (len(errs), starts_at_death[jid])
    ended_cancelled = {tag_of[j] for j, o in snap.results.items() if o.cancelled and j in tag_of}
    said_cancelled = {tag for tag, ok in cancelled.items() if ok}
    record.update(
        dead_without_start=len(dead_not_run),
        dead_worker_lost=len(dead_lost),
        work_dead=sum(1 for j in snap.dead if tag_of.get(j, "").startswith("w")),
        attempts_mismatch=len(attempts_off),
        stats_recovered=stats.get("recovered", 0),
        stats_fenced=stats.get("fenced", 0),
        cancel_true=len(said_cancelled),
        ended_cancelled=len(ended_cancelled),
        cancel_mismatch=len(said_cancelled ^ ended_cancelled),
        requeue_returned=requeue_returned,
        requeue_moved=requeue_moved,
        purge_returned=purge_returned,
        purge_moved=purge_moved,
    )
    figures = {k: record[k] for k in (
        "dropped_replies", "lost", "dead_without_start", "dead_worker_lost", "work_dead",
        "attempts_mismatch", "stats_recovered", "stats_fenced", "cancel_true", "ended_cancelled",
        "cancel_mismatch", "requeue_returned", "requeue_moved", "purge_returned", "purge_moved",
        "dup_exec", "dup_results",
    )}  # fmt: skip
    detail = f"{figures}; dead without a start: {dead_not_run[:10]}; attempts: {attempts_off}"
    assert record["dropped_replies"] > 0
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert not dead_not_run and not dead_lost, detail
    assert not attempts_off, detail
    assert stats.get("recovered", 0) == 0 and stats.get("fenced", 0) == 0, detail
    assert record["dup_exec"] == 0 and record["dup_results"] == 0, detail
    assert ended_cancelled == set(delayed) and said_cancelled == ended_cancelled, detail
    assert requeue_returned == requeue_moved == len(requeue), detail
    assert purge_returned == purge_moved == len(purge), detail
    assert set(snap.dead) == {hist.acked[tag] for tag in fail[24:]}, detail
    assert w.running
