"""Chaos scenarios about bad data: poison entries written straight into Redis, bad input at
submit, and retry/dead-letter exactness with backoff measured on Redis's clock."""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from aioqueue import (
    ArgumentError,
    Call,
    InvalidOptions,
    Options,
    PayloadTooLarge,
    Queue,
    SerializationError,
    UnknownTask,
    wire,
)
from aioqueue.testing import RedisServer

from .harness import KEYS, Scenario, admin, producer, scaled, summary
from .history import Report
from .ledger_tasks import FLAKY, WORK

pytestmark = [pytest.mark.chaos]


def _env(job_id: str, task: str = WORK, **fields: Any) -> dict[str, Any]:
    return {"v": wire.WIRE_VERSION, "id": job_id, "task": task, **fields}


def _poison(rng_bytes: bytes) -> dict[str, tuple[bytes | None, str]]:
    """Entries by kind: (bytes for the jobs hash or None for no job at all, expected error type)."""
    good = msgspec.msgpack.encode(_env("x", args=msgspec.Raw(msgspec.msgpack.encode(["t"]))))
    return {
        "random-bytes": (rng_bytes, "MalformedJob"),
        "truncated": (good[: len(good) // 2], "MalformedJob"),
        "wrong-schema": (msgspec.msgpack.encode({"v": 1, "id": 5, "task": ["no"]}), "MalformedJob"),
        "not-a-map": (msgspec.msgpack.encode([1, 2, 3]), "MalformedJob"),
        "wrong-version": (msgspec.msgpack.encode({**_env("x"), "v": 99}), "MalformedJob"),
        "unknown-task": (msgspec.msgpack.encode(_env("x", task="no.such.task")), "UnknownTask"),
        "bad-args": (
            msgspec.msgpack.encode(_env("x", args=msgspec.Raw(msgspec.msgpack.encode(7)))),
            "*",
        ),
        "oversize": (
            msgspec.msgpack.encode(_env("x", kwargs={"pad": "x" * (1 << 20)})),
            "PayloadTooLarge",
        ),
        "no-job": (None, ""),
    }


@pytest.mark.anyio
async def test_s12_poison_entries(redis_server: RedisServer, scenario: Scenario) -> None:
    """Entries that bypass submit are dead-lettered on first delivery with their reason (an id
    with no job is skipped as stale); the worker survives and every good job completes."""
    hist = scenario.history("S12 poison entries")
    w = await scenario.worker(redis_server.url)
    hist.t0 = time.time()
    poison = _poison(os.urandom(64))
    ids = {kind: f"poison-{kind}" for kind in poison}
    async with producer(redis_server.url) as q, admin(redis_server) as r:
        t = time.time()
        tags = [f"g{i}" for i in range(100)]
        jobs = await q.submit_many(WORK, [Call(tag) for tag in tags[:50]])
        hist.record_many(tags[:50], jobs, t)
        async with r.pipeline(transaction=True) as pipe:
            for kind, (data, _) in poison.items():
                if data is not None:
                    pipe.hset(KEYS.jobs, ids[kind], data)
                pipe.zadd(KEYS.pending, {ids[kind]: 0})
            pipe.rpush(KEYS.wake, "1")
            await pipe.execute()
        jobs = await q.submit_many(WORK, [Call(tag) for tag in tags[50:]])
        hist.record_many(tags[50:], jobs, time.time())
        for kind, jid in ids.items():
            if poison[kind][0] is not None:
                hist.acked[f"inj-{kind}"] = jid
                hist.attempted[f"inj-{kind}"] = t
        record = await scenario.finish(hist, redis_server)
        dead = {d.id: d for d in await q.dead_letters(limit=100)}
    reasons = {}
    for kind, (data, expected) in poison.items():
        jid = ids[kind]
        if data is None:
            assert jid not in dead
            continue
        assert jid in dead, f"{kind} was not dead-lettered"
        errors = dead[jid].errors
        assert len(errors) == 1, f"{kind}: {len(errors)} deliveries, expected 1"
        reasons[kind] = f"{errors[0].type} ({errors[0].kind})"
        if expected != "*":
            assert errors[0].type == expected, (kind, errors[0])
    record["reasons"] = reasons
    assert record["stale"] == 1, summary(record)
    assert record["completed"] == 100 and record["lost"] == 0, summary(record)
    assert record["dead"] == len(poison) - 1
    assert record["dup_exec"] == 0 and record["dup_results"] == 0
    assert w.running


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@example(b"\x83\xa1v\x01\xa2id\xa1x\xa4task\xa1\x80")
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(
            msgspec.msgpack.encode,
            st.dictionaries(
                st.sampled_from(
                    [
                        "v",
                        "id",
                        "task",
                        "args",
                        "kwargs",
                        "retries",
                        "timeout",
                        "priority",
                        "key",
                        "result_ttl",
                        "submitted",
                        "extra",
                    ]
                ),  # fmt: skip
                st.recursive(
                    st.none()
                    | st.booleans()
                    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                    | st.floats()
                    | st.text(max_size=8)
                    | st.binary(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c),
                    max_leaves=6,
                ),  # fmt: skip
                max_size=12,
            ),
        ),
        st.builds(
            lambda cut, flip: _mutate(cut, flip),
            st.integers(min_value=0, max_value=80),
            st.integers(min_value=0, max_value=255),
        ),
    )
)
def test_s12_decode_envelope_property(data: bytes) -> None:
    """decode_envelope returns a valid Envelope or raises msgspec.DecodeError (ValidationError is
    a subclass), never anything else."""
    try:
        env = wire.decode_envelope(data)
    except msgspec.DecodeError:
        return
    assert isinstance(env, wire.Envelope)
    assert env.v == wire.WIRE_VERSION
    assert isinstance(env.id, str) and isinstance(env.task, str)


_VALID = msgspec.msgpack.encode(
    _env("0123", args=msgspec.Raw(msgspec.msgpack.encode([1, "a"])), retries=2, key="k")
)


def _mutate(cut: int, flip: int) -> bytes:
    data = bytearray(_VALID[: max(1, len(_VALID) - cut % len(_VALID))])
    data[flip % len(data)] ^= flip or 1
    return bytes(data)


# -- bad input at submit ----------------------------------------------------------------------


async def _writes(r: Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    reads = {"cmdstat_info", "cmdstat_dbsize", "cmdstat_ping", "cmdstat_hello", "cmdstat_client"}
    return {k: int(v["calls"]) for k, v in stats.items() if k not in reads}


@pytest.mark.anyio
async def test_s13_bad_input_at_submit(redis_server: RedisServer, chaos_report: Report) -> None:
    """Each invalid submit raises a typed error that names the field, and writes nothing."""
    q = Queue("chaos", redis_url=redis_server.url, max_payload=4096)

    @q.task
    def typed(n: int, name: str = "") -> int:
        return n

    def not_a_task() -> None:
        return None

    sock = socket.socket()
    o = q.options
    bad = InvalidOptions
    cases: list[tuple[str, Any, type[Exception], str]] = [
        ("oversize", lambda: q.submit(typed, 1, "x" * 10_000), PayloadTooLarge, "max_payload"),
        ("unencodable", lambda: q.submit(typed, 1, name=sock), ArgumentError, "name"),
        ("unencodable-untyped", lambda: q.submit("f.t", {1, object()}), SerializationError, "#0"),
        ("unencodable-kw", lambda: q.submit("f.t", x=sock), SerializationError, "'x'"),
        ("wrong-type", lambda: q.submit(typed, "40"), ArgumentError, "'n'"),
        ("missing-arg", lambda: q.submit(typed), ArgumentError, "n"),
        ("unknown-task", lambda: q.submit(not_a_task), UnknownTask, "not_a_task"),
        ("empty-task", lambda: q.submit(""), UnknownTask, "empty"),
        ("delay<0", lambda: o(delay=-1).submit(typed, 1), bad, "delay"),
        ("delay-nan", lambda: o(delay=math.nan).submit(typed, 1), bad, "delay"),
        ("timeout-nan", lambda: o(timeout=math.nan).submit(typed, 1), bad, "timeout"),
        ("timeout-0", lambda: o(timeout=0).submit(typed, 1), bad, "timeout"),
        ("retries<0", lambda: o(retries=-1).submit(typed, 1), bad, "retries"),
        ("retries-float", lambda: o(retries=1.5).submit(typed, 1), bad, "retries"),  # type: ignore[arg-type]
        ("priority-float", lambda: o(priority=0.5).submit(typed, 1), bad, "priority"),  # type: ignore[arg-type]
        ("priority-huge", lambda: o(priority=10**9).submit(typed, 1), bad, "priority"),
        ("key-empty", lambda: o(key="").submit(typed, 1), bad, "key"),
        ("key-long", lambda: o(key="k" * 600).submit(typed, 1), bad, "key"),
        ("key-int", lambda: o(key=5).submit(typed, 1), bad, "key"),  # type: ignore[arg-type]
        ("result-ttl-0", lambda: o(result_ttl=0).submit(typed, 1), bad, "result_ttl"),
        ("batch-one-bad", lambda: q.submit_many(
            typed, [(1,), Call(2).with_options(Options(delay=-5)), (3,)]), bad, "delay"),
        ("batch-unencodable", lambda: q.submit_many(typed, [(1,), (2, sock)]), ArgumentError, "na"),
        ("queue-name-braces", lambda: _queue("a{b}"), bad, "queue name"),
        ("queue-name-empty", lambda: _queue(""), bad, "queue name"),
        ("queue-name-space", lambda: _queue("a b"), bad, "queue name"),
        ("queue-name-long", lambda: _queue("q" * 200), bad, "queue name"),
    ]  # fmt: skip
    results: dict[str, str] = {}
    try:
        async with admin(redis_server) as r:
            before, size_before = await _writes(r), await r.dbsize()
            for name, make, exc_type, field in cases:
                with pytest.raises(exc_type) as info:
                    aw = make()
                    if hasattr(aw, "__await__"):
                        await aw
                assert field in str(info.value), f"{name}: {info.value!r} does not name {field!r}"
                results[name] = type(info.value).__name__
            after, size_after = await _writes(r), await r.dbsize()
    finally:
        sock.close()
        await q.aclose()
    changed = {k: (before.get(k, 0), v) for k, v in after.items() if before.get(k, 0) != v}
    chaos_report.add(
        {"scenario": "S13 bad input at submit", "cases": len(cases), "typed": results,
         "redis_commands": changed, "dbsize_delta": size_after - size_before}
    )  # fmt: skip
    assert not changed, f"invalid submits reached Redis: {changed}"
    assert size_after == size_before == 0


def _queue(name: str) -> Queue:
    return Queue(name, redis_url="redis://127.0.0.1:1/0")


# -- retry and dead-letter exactness -----------------------------------------------------------


@pytest.mark.anyio
async def test_s15_retry_dead_letter_exactness(
    redis_server: RedisServer, scenario: Scenario
) -> None:
    """A task failing k times with 3 attempts: k < 3 succeeds at attempt k+1, k >= 3 is
    dead-lettered after exactly 3 starts; the retry delay follows the policy on Redis's clock;
    requeue from the dead letters works once."""
    backoff = 0.2
    hist = scenario.history("S15 retry exactness")
    await scenario.worker(redis_server.url, retry_backoff=backoff)
    hist.t0 = time.time()
    ks = [0, 1, 2, 3, 5]
    async with producer(redis_server.url) as q, admin(redis_server) as r:
        for k in ks:
            await hist.submit(f"f{k}", q.submit(FLAKY, f"f{k}", k))
        ids = {hist.acked[f"f{k}"]: k for k in ks}
        timeline = await _watch(r, list(ids), until=lambda s: s["busy"] == 0, stall=5.0)
        record = await scenario.finish(hist, redis_server, multi_start=[f"f{k}" for k in ks])
        ledger = scenario.ledger()
        dead = {d.id: d for d in await q.dead_letters()}
        outcomes = {}
        for jid, k in ids.items():
            if k < 3:
                outcomes[k] = await q.job(jid).result(timeout=scaled(5))
        # requeue the dead ones: f3 now succeeds at once, f5 needs 2 more failures
        dead_ids = [jid for jid, k in ids.items() if k >= 3]
        assert await q.requeue_dead(dead_ids) == 2
        assert await q.requeue_dead(dead_ids) == 0
        await scenario.finish(hist, redis_server, requeued=2, multi_start=[f"f{k}" for k in ks])
        again = {ids[jid]: await q.job(jid).result(timeout=scaled(5)) for jid in dead_ids}
    for k in ks:
        expected_starts = k + 1 if k < 3 else 3
        assert ledger.starts[f"f{k}"] == expected_starts, (k, ledger.starts)
    for k, value in outcomes.items():
        assert value == [f"f{k}", k + 1]
    assert set(dead) == set(dead_ids)
    for jid in dead_ids:
        errs = dead[jid].errors
        assert [e.attempt for e in errs] == [1, 2, 3]
        assert "start 3 fails" in errs[-1].message and "RuntimeError" in errs[-1].traceback
    assert again == {3: ["f3", 4], 5: ["f5", 6]}
    # backoff on Redis's clock: each retry is due at failure + delay, with delay within the
    # jittered policy [0.5, 1] x backoff x 2^(attempt-1), and is claimed on time
    gaps = []
    for jid, events in timeline.items():
        for attempt, t_fail, due, t_claim in events:
            nominal = backoff * 2 ** (attempt - 1) * 1000
            delay = due - t_fail
            slack = 50 * scaled(1.0)  # polling and scheduling slack, scaled to the machine
            assert 0.5 * nominal - slack <= delay <= nominal + slack, (ids[jid], attempt, delay)
            gaps.append(round(t_claim - due, 1))
    record["claim_late_ms"] = gaps
    record["retries_measured"] = len(gaps)
    assert len(gaps) >= 4  # of 7 retries (f1: 1, f2: 2, f3: 2, f5: 2); the rest were too quick
    assert record["lost"] == 0 and record["dup_results"] == 0, summary(record)
    # a due retry is claimed on time: the worker waits out the last stretch before it is due
    # itself (Redis ends blocking waits on its 100 ms clock); 150 ms is scheduling slack on the
    # reference machine, scaled to this machine's measured speed
    late = 150 * scaled(1.0)
    assert all(-5 <= g <= late for g in gaps), f"retries claimed late (ms after due): {gaps}"


async def _watch(
    r: Redis, ids: list[str], until: Any, stall: float
) -> dict[str, list[tuple[int, float, float, float]]]:
    """Poll (on Redis's clock) each job's attempts and scheduled score; per job, per retry:
    (attempt that failed, ms when its retry was seen, ms it was due, ms it was claimed again).

    Fails when nothing has changed for ``stall`` seconds (scaled to the machine's speed) past
    the next retry's due time."""
    seen_fail: dict[str, tuple[float, float, int]] = {}
    out: dict[str, list[tuple[int, float, float, float]]] = {jid: [] for jid in ids}
    last_attempts = dict.fromkeys(ids, 0)
    limit = scaled(stall)
    last_change = time.monotonic()
    seen_state: Any = None
    busy = -1
    while time.monotonic() - last_change < limit:
        async with r.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.hmget(KEYS.attempts, ids)
            for jid in ids:
                pipe.zscore(KEYS.scheduled, jid)
            pipe.zcard(KEYS.pending)
            pipe.zcard(KEYS.scheduled)
            pipe.zcard(KEYS.leases)
            res = await pipe.execute()
        now = res[0][0] * 1000 + res[0][1] / 1000
        for i, jid in enumerate(ids):
            attempts = int(res[1][i] or 0)
            due = res[2 + i]
            if due is not None and (jid not in seen_fail or float(due) != seen_fail[jid][1]):
                # a new due time: first seen, or the job was claimed, failed and rescheduled
                # between two polls (that claim's moment was not seen, so it is not measured)
                seen_fail[jid] = (now, float(due), attempts)
            elif due is None and jid in seen_fail:
                # the claim script promotes a due job and pops it in one step: leaving the
                # scheduled set is the moment it was claimed again
                t_fail, due_ms, attempt = seen_fail.pop(jid)
                out[jid].append((attempt, t_fail, due_ms, now))
            last_attempts[jid] = max(last_attempts[jid], attempts)
        busy = sum(res[-3:])
        if until({"busy": busy}) and not seen_fail:
            return out
        state = (res[1], res[2 : 2 + len(ids)], res[-3:])
        if state != seen_state:
            seen_state, last_change = state, time.monotonic()
        due_next = [float(d) for d in res[2 : 2 + len(ids)] if d is not None]
        if due_next:  # waiting for a retry's backoff is no stall
            last_change = max(last_change, time.monotonic() + (min(due_next) - now) / 1000)
        await anyio.sleep(0.002)
    raise AssertionError(f"retries stopped moving: busy={busy}, waiting={seen_fail}")


@pytest.mark.anyio
async def test_s12_poison_invalid_utf8(redis_server: RedisServer, scenario: Scenario) -> None:
    """An entry whose task name is not valid UTF-8 is dead-lettered as malformed on its first
    delivery; the worker survives and the good jobs behind it complete."""
    hist = scenario.history("S12 poison invalid UTF-8")
    w = await scenario.worker(redis_server.url)
    hist.t0 = time.time()
    async with producer(redis_server.url) as q, admin(redis_server) as r:
        await r.hset(KEYS.jobs, "poison-utf8", b"\x83\xa1v\x01\xa2id\xa1x\xa4task\xa1\x80")
        await r.zadd(KEYS.pending, {"poison-utf8": 0})
        await r.rpush(KEYS.wake, "1")
        hist.acked["inj-utf8"] = "poison-utf8"
        hist.attempted["inj-utf8"] = time.time()
        tags = [f"g{i}" for i in range(20)]
        jobs = await q.submit_many(WORK, [Call(tag) for tag in tags])
        hist.record_many(tags, jobs, time.time())
        record = await scenario.finish(hist, redis_server)
        dead = {d.id: d for d in await q.dead_letters()}
    assert w.running, w.log_text()[-2000:]
    assert "poison-utf8" in dead and len(dead["poison-utf8"].errors) == 1
    assert record["completed"] == 20 and record["lost"] == 0, summary(record)
