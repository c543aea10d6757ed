"""The chaos checker: Jepsen ``total-queue`` metrics from three independent sources.

* the producer's history (:class:`History`): every submit attempted, acknowledged or errored,
  keyed by the job's tag, plus the faults injected and when;
* the execution ledger written by the tasks outside Redis (:func:`read_ledger`);
* a dump of Redis after the drain (:func:`snapshot`).

:func:`check` turns them into one record (attempted, acknowledged, lost, unexpected, dup_exec,
dup_results, fenced, recovered, recovery time, throughput, latency), which a scenario asserts on
and appends to the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from aioqueue import wire
from aioqueue.keys import Keys

__all__ = (
    "Entry",
    "Fault",
    "History",
    "Ledger",
    "Report",
    "Snapshot",
    "check",
    "drain",
    "read_ledger",
    "read_movement",
    "snapshot",
)


@dataclass(frozen=True)
class Entry:
    """One ledger line."""

    kind: str  # start or end
    tag: str
    pid: int
    t: float


def read_ledger(directory: Path) -> list[Entry]:
    """Every complete ledger line in ``directory``, in time order; a torn last line is ignored."""
    out: list[Entry] = []
    for path in sorted(directory.glob("*.log")):
        for raw in path.read_bytes().split(b"\n")[:-1]:
            parts = raw.decode(errors="replace").split()
            if len(parts) != 4 or parts[0] not in ("start", "end"):
                continue
            with contextlib.suppress(ValueError):
                out.append(Entry(parts[0], parts[1], int(parts[2]), float(parts[3])))
    out.sort(key=lambda e: e.t)
    return out


class Ledger:
    """Queries over ledger entries."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.starts = Counter(e.tag for e in entries if e.kind == "start")

    @classmethod
    def read(cls, directory: Path) -> Ledger:
        return cls(read_ledger(directory))

    def open_on(self, pids: Iterable[int]) -> set[str]:
        """Tags whose last event on one of ``pids`` is a start: interrupted there (or running)."""
        wanted = set(pids)
        last: dict[tuple[int, str], str] = {}
        for e in self.entries:
            if e.pid in wanted:
                last[(e.pid, e.tag)] = e.kind
        return {tag for (_, tag), kind in last.items() if kind == "start"}

    def started_on(self, pids: Iterable[int]) -> set[str]:
        wanted = set(pids)
        return {e.tag for e in self.entries if e.kind == "start" and e.pid in wanted}

    def starts_after(self, t: float) -> list[Entry]:
        return [e for e in self.entries if e.kind == "start" and e.t > t]

    def first_start_after(self, t: float) -> float | None:
        for e in self.entries:
            if e.kind == "start" and e.t > t:
                return e.t
        return None


@dataclass
class Fault:
    """One injected fault; ``orphans`` are the tags it interrupted (their recovery is timed)."""

    name: str
    t: float
    orphans: set[str] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    """What the producers did and which faults were injected, as seen from the test."""

    scenario: str
    seed: int
    attempted: dict[str, float] = field(default_factory=dict)  # tag -> first attempt (time.time)
    acked: dict[str, str] = field(default_factory=dict)  # tag -> job id
    errored: dict[str, str] = field(default_factory=dict)  # tag -> error type of its last submit
    faults: list[Fault] = field(default_factory=list)
    t0: float = field(default_factory=time.time)

    async def submit(self, tag: str, aw: Awaitable[Any]) -> Any:
        """Await a submit of the job tagged ``tag``; record it as acknowledged or errored."""
        self.attempted.setdefault(tag, time.time())
        try:
            job = await aw
        except Exception as exc:
            self.errored[tag] = type(exc).__name__
            return None
        self.acked[tag] = job.id
        self.errored.pop(tag, None)
        return job

    def record_many(self, tags: list[str], jobs: list[Any], t: float) -> None:
        for tag, job in zip(tags, jobs, strict=True):
            self.attempted.setdefault(tag, t)
            self.acked[tag] = job.id

    def fault(self, name: str, orphans: Iterable[str] = (), **extra: Any) -> Fault:
        f = Fault(name, time.time(), set(orphans), dict(extra))
        self.faults.append(f)
        return f


@dataclass
class Snapshot:
    """Redis after the drain."""

    stats: dict[str, int]
    results: dict[str, wire.Outcome]
    dead: dict[str, float]
    errors: dict[str, list[wire.ErrorInfo]]
    jobs: dict[str, bytes]
    pending: int
    scheduled: int
    leases: int
    tokens: int
    dbsize: int
    used_memory: int

    def tag_of(self, job_id: str) -> str | None:
        """The tag (first argument) of a job, from its result value or its stored envelope."""
        out = self.results.get(job_id)
        if out is not None and out.ok:
            with contextlib.suppress(msgspec.DecodeError):
                value = msgspec.msgpack.decode(out.value)
                if isinstance(value, list) and value and isinstance(value[0], str):
                    return value[0]
        data = self.jobs.get(job_id)
        if data is not None:
            with contextlib.suppress(msgspec.DecodeError):
                args = msgspec.msgpack.decode(wire.decode_envelope(data).args)
                if isinstance(args, list) and args and isinstance(args[0], str):
                    return args[0]
        return None

    def value_of(self, job_id: str) -> Any:
        out = self.results.get(job_id)
        if out is None or not out.ok:
            return None
        return msgspec.msgpack.decode(out.value)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def snapshot(redis: Redis, keys: Keys) -> Snapshot:
    """Read everything the checker needs from Redis."""
    results: dict[str, wire.Outcome] = {}
    prefix = keys.result("")
    names = [_s(k) async for k in redis.scan_iter(match=prefix + "*", count=1000)]
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        for name, data in zip(chunk, await redis.mget(chunk), strict=True):
            if data is not None:
                results[name[len(prefix) :]] = wire.decode_outcome(data)
    dead = {_s(m): float(s) for m, s in await redis.zrange(keys.dead, 0, -1, withscores=True)}
    errors = {_s(k): wire.decode_errors(v) for k, v in (await redis.hgetall(keys.errors)).items()}
    jobs = {_s(k): bytes(v) for k, v in (await redis.hgetall(keys.jobs)).items()}
    stats = {_s(k): int(v) for k, v in (await redis.hgetall(keys.stats)).items()}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.pending)
        pipe.zcard(keys.scheduled)
        pipe.zcard(keys.leases)
        pipe.hlen(keys.tokens)
        pipe.dbsize()
        pending, scheduled, leases, tokens, dbsize = await pipe.execute()
    memory = int((await redis.info("memory"))["used_memory"])
    return Snapshot(
        stats=stats,
        results=results,
        dead=dead,
        errors=errors,
        jobs=jobs,
        pending=pending,
        scheduled=scheduled,
        leases=leases,
        tokens=tokens,
        dbsize=dbsize,
        used_memory=memory,
    )


def read_movement(pipe: Pipeline, keys: Keys) -> None:
    """Queue on ``pipe`` what changes whenever a job moves: the pending, scheduled, leased and
    dead counts, then the ``stats`` counters (five replies, in that order)."""
    pipe.zcard(keys.pending)
    pipe.zcard(keys.scheduled)
    pipe.zcard(keys.leases)
    pipe.zcard(keys.dead)
    pipe.hgetall(keys.stats)


async def drain(redis: Redis, keys: Keys, stall: float = 10.0) -> float:
    """Wait until nothing is pending, scheduled or leased; return the seconds it took.

    There is no deadline while the queue moves: the wait fails only when nothing has changed
    (the pending, scheduled, leased and dead counts and the ``stats`` counters) for ``stall``
    seconds, not counting time before the next scheduled job is due.

    :raises AssertionError: if the queue stalls.
    """
    start = last_change = time.monotonic()
    seen: Any = None
    counts: list[int] = []
    error = ""
    while True:
        now = time.monotonic()
        try:
            async with redis.pipeline(transaction=False) as pipe:
                read_movement(pipe, keys)
                pipe.zrange(keys.scheduled, 0, 0, withscores=True)
                pipe.time()
                *sizes, stats, first_due, server_time = await pipe.execute()
            counts = [int(c) for c in sizes[:3]]
            error = ""
            if sum(counts) == 0:
                return now - start
            state = (sizes, sorted(stats.items()))
            if state != seen:
                seen, last_change = state, now
            if first_due:
                # a delayed job or a retry's backoff: waiting for it is not a stall
                wait_s = float(first_due[0][1]) - (server_time[0] * 1000 + server_time[1] / 1000)
                last_change = max(last_change, now + wait_s / 1000)
        except Exception as exc:  # Redis may still be coming back; that is no progress
            counts = [-1, -1, -1]
            error = f" ({type(exc).__name__}: {exc})"
        if now - last_change > stall:
            raise AssertionError(
                f"not drained: nothing moved for {stall:.1f}s after {now - start:.1f}s; "
                f"pending, scheduled, leases = {counts}{error}"
            )
        await anyio.sleep(0.05)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 1)


def check(
    hist: History,
    snap: Snapshot,
    ledger: Ledger,
    *,
    multi_start: Iterable[str] = (),
    requeued: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute the run's record.

    :param multi_start: tags that are expected to start more than once (retried on purpose);
        they are left out of ``dup_exec``.
    :param requeued: dead letters requeued by the test (each allows one more terminal outcome).
    """
    acked_ids = set(hist.acked.values())
    tag_by_id = {jid: tag for tag, jid in hist.acked.items()}
    lost = sorted(jid for jid in acked_ids if jid not in snap.results and jid not in snap.dead)

    # results for ids never acknowledged: a submit that errored but went through is "recovered",
    # anything else is "unexpected"
    recovered_submits: list[str] = []
    unexpected: list[str] = []
    ids_per_tag: dict[str, set[str]] = {}
    for jid in snap.results:
        tag = tag_by_id.get(jid) or snap.tag_of(jid)
        if tag is not None:
            ids_per_tag.setdefault(tag, set()).add(jid)
        if jid in acked_ids:
            continue
        if tag is not None and tag in hist.errored:
            recovered_submits.append(jid)
        else:
            unexpected.append(jid)
    duplicate_jobs = {tag: sorted(ids) for tag, ids in ids_per_tag.items() if len(ids) > 1}

    skip = set(multi_start)
    dup_exec = sum(max(0, n - 1) for tag, n in ledger.starts.items() if tag not in skip)
    dup_tags = sorted(tag for tag, n in ledger.starts.items() if n > 1 and tag not in skip)
    never_started = sorted(
        tag for tag, jid in hist.acked.items() if ledger.starts[tag] == 0 and jid in snap.results
    )

    terminal = snap.stats.get("completed", 0) + snap.stats.get("dead", 0)
    finished = sum(1 for o in snap.results.values() if not o.cancelled)
    dup_results = max(0, terminal - finished - requeued)

    recovery: list[dict[str, Any]] = []
    for f in hist.faults:
        done: list[float] = []
        missing = 0
        for tag in f.orphans:
            jid = hist.acked.get(tag)
            out = snap.results.get(jid) if jid else None
            if out is None:
                missing += 1
            else:
                done.append(out.finished)
        rec: dict[str, Any] = {"fault": f.name, "orphans": len(f.orphans), **f.extra}
        rec["recovery_ms"] = round((max(done) - f.t) * 1000, 1) if done else None
        if missing:
            rec["orphans_unfinished"] = missing
        recovery.append(rec)
    rec_ms = [r["recovery_ms"] for r in recovery if r["recovery_ms"] is not None]

    ok = [o for jid, o in snap.results.items() if o.ok and jid in acked_ids]
    latencies = [
        (o.finished - hist.attempted[tag_by_id[jid]]) * 1000
        for jid, o in snap.results.items()
        if o.ok and jid in tag_by_id and tag_by_id[jid] in hist.attempted
    ]
    end = max((o.finished for o in ok), default=hist.t0)
    reasons = Counter(
        (snap.errors.get(jid) or [wire.ErrorInfo(type="?", message="")])[-1].type
        for jid in snap.dead
    )
    record: dict[str, Any] = {
        "scenario": hist.scenario,
        "seed": hist.seed,
        "attempted": len(hist.attempted),
        "acknowledged": len(hist.acked),
        "submit_errors": len(hist.errored),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "recovered_submits": len(recovered_submits),
        "duplicate_jobs": len(duplicate_jobs),
        "dup_exec": dup_exec,
        "dup_results": dup_results,
        "fenced": snap.stats.get("fenced", 0),
        "recovered": snap.stats.get("recovered", 0),
        "stale": snap.stats.get("stale", 0),
        "completed": snap.stats.get("completed", 0),
        "retried": snap.stats.get("retried", 0),
        "dead": len(snap.dead),
        "dlq_reasons": dict(reasons),
        "faults": len(hist.faults),
        "recovery_ms": {"max": max(rec_ms, default=None), "p50": _pct(rec_ms, 0.5)},
        "recovery": recovery,
        "throughput_jobs_s": round(len(ok) / (end - hist.t0), 1) if end > hist.t0 else None,
        "latency_ms": {"p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99)},
        "duration_s": round(time.time() - hist.t0, 2),
        "leftover": {
            "pending": snap.pending,
            "scheduled": snap.scheduled,
            "leases": snap.leases,
            "tokens": snap.tokens,
        },
        "details": {
            "lost_ids": lost[:20],
            "unexpected_ids": unexpected[:20],
            "duplicate_jobs": dict(list(duplicate_jobs.items())[:20]),
            "dup_tags": dup_tags[:20],
            "never_started": never_started[:20],
        },
    }
    if extra:
        record.update(extra)
    return record


class Report:
    """Collects one record per scenario and writes them as one JSON document."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.seed = seed
        self.records: list[dict[str, Any]] = []
        self.started = time.time()

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def write(self) -> None:
        if not self.records:
            return
        doc = {
            "seed": self.seed,
            "started": self.started,
            "duration_s": round(time.time() - self.started, 1),
            "runs": self.records,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
        os.replace(tmp, self.path)
