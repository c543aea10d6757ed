"""Jobs flowing through several queues while the Redis deployment under them fails over or moves
data: each queue's producer, workers (real subprocesses), ledger and history, and the checker's
record per queue afterwards (see :mod:`tests.chaos.history`).

Producers submit without pause and also await results one by one (so results are waited for
across the fault, through pub/sub). The workers run the chaos plan's settings with the default
5 s lease, which outlasts a failover (about 2.5 s with a 1 s node timeout), so a lease expires
only when the failover lost its last extension.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from redis.asyncio import Redis

from aioqueue import AioqueueError, JobNotFound, Queue
from aioqueue.keys import Keys
from aioqueue.testing import find_redis_server

from .chaos import harness
from .chaos.harness import WorkerProc, Workers, summary
from .chaos.history import History, Ledger, check, drain, snapshot
from .chaos.ledger_tasks import WORK

T = TypeVar("T")

__all__ = (
    "FIGURES", "LEASE", "Flow", "Lane", "check_kept", "fields", "machine", "outage",
    "redis_version", "show",
)  # fmt: skip

LEASE = 5.0
COST = 0.01  # seconds each job sleeps
SUBMIT_EVERY = 0.03  # seconds between a queue's submits: below what its worker can run, so
# that an awaited result waits for the fault, not behind a backlog


@dataclass
class Lane:
    """One queue of the flow: its producer, workers, ledger and history."""

    name: str
    producer: Queue
    workers: Workers
    ledger_dir: Path
    hist: History
    procs: list[WorkerProc] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)  # seconds each awaited result took
    wait_errors: int = 0  # result() raised (Redis unreachable), and was awaited again
    not_found: int = 0  # result() said the job is gone (lost with a failover)
    n: int = 0

    @property
    def keys(self) -> Keys:
        return self.producer.keys

    def tag(self) -> str:
        self.n += 1
        return f"{self.name}-{self.n}"

    def ledger(self) -> Ledger:
        return Ledger.read(self.ledger_dir)


class Flow:
    """Producers and workers on the queues ``names`` of the deployment at ``url``."""

    def __init__(self, url: str, root: Path, names: list[str], scenario: str, seed: int) -> None:
        self.url = url
        self.lanes: dict[str, Lane] = {}
        for name in names:
            ledger = root / name / "ledger"
            ledger.mkdir(parents=True)
            self.lanes[name] = Lane(
                name,
                Queue(name, url, connect_timeout=1.0, redis_retries=3),
                Workers(root / name, ledger, queue=name),
                ledger,
                History(f"{scenario}: {name}", seed),
            )

    @contextlib.asynccontextmanager
    async def running(self, per_queue: int = 1) -> AsyncIterator[Flow]:
        """Start ``per_queue`` workers on each queue (pools up) and open the producers; on the
        way out close them and kill what is left of the workers."""
        try:
            for lane in self.lanes.values():
                lane.procs = [lane.workers.start(self.url, lease=LEASE) for _ in range(per_queue)]
            for lane in self.lanes.values():
                for proc in lane.procs:
                    await lane.workers.wait_children(proc)
                await lane.producer.__aenter__()
                lane.hist.t0 = time.time()
            yield self
        finally:
            for lane in self.lanes.values():
                await lane.producer.aclose()
            strays = [pid for lane in self.lanes.values() for pid in lane.workers.cleanup()]
            assert not strays, f"worker children left behind: {strays}"

    async def produce(self, stop: anyio.Event) -> None:
        """Submit to every queue, and await results one by one, until ``stop``."""
        async with anyio.create_task_group() as tg:
            for lane in self.lanes.values():
                tg.start_soon(self._submit, lane, stop)
                tg.start_soon(self._await, lane, stop)

    async def _submit(self, lane: Lane, stop: anyio.Event) -> None:
        while not stop.is_set():
            tag = lane.tag()
            await lane.hist.submit(tag, lane.producer.submit(WORK, tag, COST))
            await anyio.sleep(SUBMIT_EVERY)

    async def _await(self, lane: Lane, stop: anyio.Event) -> None:
        while not stop.is_set():
            tag = lane.tag()
            start = time.monotonic()
            job = await lane.hist.submit(tag, lane.producer.submit(WORK, tag, COST))
            if job is None:
                await anyio.sleep(0.05)
                continue
            while True:
                try:
                    value = await job.result(timeout=harness.scaled(30.0))
                except JobNotFound:
                    lane.not_found += 1
                    break
                except AioqueueError:
                    lane.wait_errors += 1
                    await anyio.sleep(0.05)
                    continue
                assert value[0] == tag, (value, tag)
                lane.waits.append(time.monotonic() - start)
                break

    async def warmed(self, starts: int = 20) -> None:
        """Wait until every queue has started ``starts`` jobs (its worker claims), so that a fault
        comes while every queue runs."""

        def ready() -> bool:
            return all(sum(lane.ledger().starts.values()) >= starts for lane in self.lanes.values())

        await harness.eventually(ready, 20.0, f"{starts} jobs started on every queue")

    async def through(
        self, fault: Callable[[], Awaitable[T]], wait: float, settle: float = 1.5
    ) -> tuple[float, float, T]:
        """Jobs flow on every queue; ``wait`` s after every queue is warm, ``fault()`` runs;
        submits go on for ``settle`` s after it returns (the workload's length, not a wait for
        state), then stop. Returns when the fault began (wall clock), how long it took, and
        what it returned."""
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.produce, stop)
            await self.warmed()
            await anyio.sleep(wait)
            t_fault = time.time()
            value = await fault()
            took = time.time() - t_fault
            await anyio.sleep(settle)
            stop.set()
        return t_fault, took, value

    def workers_alive(self) -> bool:
        """Every worker of every queue still runs (none died of the fault)."""
        return all(p.running for lane in self.lanes.values() for p in lane.procs)

    async def finish(
        self, admin: Callable[[Keys], Redis], stall: float = 15.0
    ) -> dict[str, dict[str, Any]]:
        """Drain every queue and check it; ``admin(keys)``: a plain client of the server that
        holds those keys now. Beyond :func:`check`'s record, each says which lost jobs Redis no
        longer knows at all (``lost_untraced``: an acknowledged write a failover dropped) and
        which it still holds unfinished (``lost_kept``: aioqueue's fault, never expected)."""
        records = {}
        for name, lane in self.lanes.items():
            async with admin(lane.keys) as r:
                drained = await drain(r, lane.keys, harness.scaled(stall))
                snap = await snapshot(r, lane.keys)
            ledger = lane.ledger()
            record = check(lane.hist, snap, ledger)
            acked = lane.hist.acked
            lost = [t for t, i in acked.items() if i not in snap.results and i not in snap.dead]
            record.update(
                drain_s=round(drained, 2),
                lost_kept=sum(1 for t in lost if acked[t] in snap.jobs),
                lost_untraced=sum(1 for t in lost if acked[t] not in snap.jobs),
                lost_had_run=sum(1 for t in lost if ledger.starts[t]),
                results_awaited=len(lane.waits),
                result_wait_max_s=round(max(lane.waits, default=0.0), 2),
                result_wait_errors=lane.wait_errors,
                result_not_found=lane.not_found,
            )
            records[name] = record
        return records


def fields(record: dict[str, Any], *names: str) -> str:
    """``name=value`` of each of ``names`` in a record."""
    return ", ".join(f"{n}={record.get(n)}" for n in names)


#: The figures of a record worth printing.
FIGURES = ("acknowledged", "submit_errors", "lost", "lost_untraced", "lost_had_run",
           "dup_exec", "dup_results", "recovered", "fenced", "results_awaited",
           "result_wait_max_s", "result_wait_errors", "result_not_found")  # fmt: skip


def check_kept(record: dict[str, Any], in_flight: int = 2) -> None:
    """At least once for every job Redis kept, one result each, no job twice."""
    assert record["lost_kept"] == 0, summary(record)
    assert record["unexpected"] == 0 and record["duplicate_jobs"] == 0, summary(record)
    assert record["dup_results"] == 0, summary(record)
    assert record["dup_exec"] <= in_flight, summary(record)
    assert record["leftover"]["leases"] == 0, summary(record)


def outage(ledger: Ledger, t_fault: float) -> dict[str, float | int | None]:
    """How long a queue stopped around a fault at ``t_fault`` (Unix time), from its ledger:
    ``stall_s``, the longest time without a job start (a start needs a claim that Redis
    answered) from the last start before the fault on, and ``resume_s``, from the fault to the
    end of that stall; ``completion_gap_s``, the same for job ends (last completion before the
    fault to the first after the stall); ``starts_before`` and ``starts_after`` the fault."""
    out: dict[str, float | int | None] = {}
    for kind, name in (("start", "stall_s"), ("end", "completion_gap_s")):
        times = sorted(e.t for e in ledger.entries if e.kind == kind)
        before = [t for t in times if t <= t_fault]
        after = [t for t in times if t > t_fault]
        if kind == "start":
            out.update(starts_before=len(before), starts_after=len(after))
        if not after:
            out[name] = None
            continue
        points = [before[-1] if before else t_fault, *after]
        gap, end = max((b - a, b) for a, b in zip(points, points[1:], strict=False))
        out[name] = round(gap, 3)
        if kind == "start":
            out["resume_s"] = round(end - t_fault, 3)
    return out


def show(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Print ``lines`` on the terminal, past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not lines:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def machine() -> str:
    """The CPU model, core count, load and measured slowdown, for the figures' header."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} cores, load {load:.1f}, "
        f"slowdown {harness.SLOWDOWN:.2f} (the chaos suite's measure)"
    )


def redis_version() -> str:
    """The version of the redis-server the tests start."""
    out = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=False
    )
    return next((w[2:] for w in out.stdout.split() if w.startswith("v=")), "?")
