"""Harness of the chaos suite: worker subprocesses, /proc helpers, submit loops, and what a
scenario works with (:class:`Scenario`, the ``scenario`` fixture), its end included.

Workers are real ``python -m aioqueue`` subprocesses so that SIGKILL, SIGTERM and SIGSTOP are
real; :class:`Workers` tracks them and, at teardown, kills what is left and reports any child
process of a worker that outlived its supervisor.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from aioqueue import Queue
from aioqueue.keys import Keys
from aioqueue.testing import RedisServer

from .history import History, Ledger, Report, check, drain, read_movement, snapshot
from .ledger_tasks import LEDGER_ENV, QUEUE_ENV, WORK
from .proxy import ThreadedFaultProxy

REPO = Path(__file__).resolve().parents[2]
QUEUE_NAME = "chaos"
SPEC = "tests.chaos.ledger_tasks:queue"

#: The worker configuration of the test plan: lease 1 s, heartbeat 0.2 s, maintenance 0.2 s.
LEASE = 1.0
MAINTENANCE = 0.2
WORKER_FLAGS: dict[str, str] = {
    "--processes": "2",
    "--heartbeat": "0.2",
    "--lease": str(LEASE),
    "--maintenance-interval": str(MAINTENANCE),
    "--block-timeout": "0.5",
    "--retry-backoff": "0.05",
    "--grace": "5",
    "--log-level": "warning",
}


# -- machine speed -----------------------------------------------------------------------------

#: Seconds the calibration loop takes on the reference machine (a quiet 2-core EPYC VM).
REFERENCE_LOOP_S = 0.020
_LOOP_N = 300_000
MAX_SLOWDOWN = 8.0


def _loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def measure_slowdown(runs: int = 5) -> float:
    """How many times slower than the reference machine this one is right now, at least 1.

    The median of ``runs`` timings of a pure-Python loop (slower CPU, or CPU shared with other
    work), or the run queue per core (``loadavg``), whichever says slower; capped at
    :data:`MAX_SLOWDOWN`.
    """
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _loop(_LOOP_N)
        times.append(time.perf_counter() - start)
    ratio = statistics.median(times) / REFERENCE_LOOP_S
    with contextlib.suppress(OSError):
        ratio = max(ratio, os.getloadavg()[0] / (os.cpu_count() or 1))
    return min(MAX_SLOWDOWN, max(1.0, ratio))


#: The current slowdown (see :func:`measure_slowdown`); the chaos conftest measures it at the
#: session's start and again before each scenario (the machine's load changes as other work runs).
SLOWDOWN = 1.0


def set_slowdown(value: float) -> None:
    global SLOWDOWN
    SLOWDOWN = min(MAX_SLOWDOWN, max(1.0, value))


def scaled(seconds: float) -> float:
    """A wait or margin of ``seconds`` on the reference machine, stretched to this one's speed."""
    return seconds * SLOWDOWN


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``pid``; False if the process is gone already (a fault injector's target
    may exit on its own at any moment: a finished job, a crash, an earlier fault)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# -- processes ---------------------------------------------------------------------------------


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def alive(pid: int) -> bool:
    st = proc_state(pid)
    return st is not None and st[0] not in ("Z", "X")


def child_pids(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_state(int(name))
            if st is not None and st[1] == ppid and st[0] not in ("Z", "X"):
                out.append(int(name))
    return sorted(out)


def marked_pids(marker: bytes) -> list[int]:
    """Live processes whose environment contains ``marker``."""
    out = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env and alive(int(name)):
            out.append(int(name))
    return sorted(out)


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid``; -1 if it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB; -1 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return -1
    return 0


class WorkerProc:
    """One worker supervisor subprocess."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.popen = popen
        self.log = log
        self.name = name
        self.pid = popen.pid
        self.signals: list[tuple[str, float]] = []

    def __repr__(self) -> str:
        return f"WorkerProc({self.name}, pid={self.pid})"

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def children(self) -> list[int]:
        """Pids of its live child processes."""
        return child_pids(self.pid) if self.running else []

    def send(self, sig: signal.Signals) -> float:
        t = time.time()
        self.signals.append((sig.name, t))
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)
        return t

    def kill(self) -> tuple[float, list[int]]:
        """SIGKILL the supervisor and reap it; returns (when, its children just before)."""
        kids = self.children()
        t = self.send(signal.SIGKILL)
        self.popen.wait(scaled(10))
        return t, kids

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Workers:
    """Starts worker subprocesses for one test and cleans up after them."""

    def __init__(self, root: Path, ledger: Path, queue: str = QUEUE_NAME) -> None:
        self.root = root
        self.ledger = ledger
        self.queue = queue
        self.procs: list[WorkerProc] = []
        self.marker = f"{LEDGER_ENV}={ledger}".encode()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[QUEUE_ENV] = self.queue
        env[LEDGER_ENV] = str(self.ledger)
        env.pop("AIOQUEUE_REDIS_URL", None)
        return env

    def start(self, url: str, **flags: Any) -> WorkerProc:
        """Start ``python -m aioqueue`` on ``url``; ``flags`` override the plan's settings
        (``lease=2`` becomes ``--lease 2``; a value of None drops the flag)."""
        opts = dict(WORKER_FLAGS)
        for key, value in flags.items():
            name = "--" + key.replace("_", "-")
            if value is None:
                opts.pop(name, None)
            else:
                opts[name] = str(value)
        argv = [sys.executable, "-m", "aioqueue", SPEC, "--redis-url", url]
        for name, value in opts.items():
            argv += [name] if value == "" else [name, value]
        name = f"w{len(self.procs)}"
        log = self.root / f"worker-{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, cwd=REPO, env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        proc = WorkerProc(popen, log, name)
        self.procs.append(proc)
        return proc

    async def wait_children(self, proc: WorkerProc, n: int = 2, timeout: float = 15.0) -> list[int]:
        """Wait until ``proc`` has ``n`` live children (its pool is up); ``timeout`` is scaled to
        the machine's speed."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            kids = proc.children()
            if len(kids) >= n:
                return kids
            if not proc.running:
                raise AssertionError(f"{proc} exited with {proc.returncode}: {proc.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc} has {kids} children after {timeout:.1f}s")
            await anyio.sleep(0.02)

    async def assert_no_orphans(self, timeout: float = 3.0) -> None:
        """No process of this test's workers is alive unless its supervisor is (within
        ``timeout``, scaled to the machine's speed: children notice their supervisor's death by
        polling)."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            live_sup = {p.pid for p in self.procs if p.running}
            strays = [
                pid
                for pid in marked_pids(self.marker)
                if pid not in live_sup and (proc_state(pid) or ("", 0))[1] not in live_sup
            ]
            if not strays:
                return
            if time.monotonic() > deadline:
                for pid in strays:
                    signal_pid(pid, signal.SIGKILL)
                raise AssertionError(
                    f"orphaned worker children outlived their supervisor: {strays}"
                )
            await anyio.sleep(0.02)

    def cleanup(self) -> list[int]:
        """SIGKILL every worker still running; return the pids of stray children found."""
        for p in self.procs:
            if p.running:
                p.send(signal.SIGCONT)
                p.send(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(scaled(10))
        deadline = time.monotonic() + scaled(3.0)
        strays = marked_pids(self.marker)
        while strays and time.monotonic() < deadline:
            time.sleep(0.02)
            strays = marked_pids(self.marker)
        for pid in strays:
            signal_pid(pid, signal.SIGKILL)
        return strays


# -- scenario plumbing --------------------------------------------------------------------------


#: The Queue argument for Redis command retries (``retries`` before it was renamed).
_REDIS_RETRIES = (
    "redis_retries" if "redis_retries" in inspect.signature(Queue).parameters else "retries"
)


def producer(url: str, *, redis_retries: int | None = None, **kwargs: Any) -> Queue:
    """A producer-side Queue for the chaos queue (tasks submitted by name)."""
    kwargs.setdefault("connect_timeout", 1.0)
    if redis_retries is not None:
        kwargs[_REDIS_RETRIES] = redis_retries
    return Queue(QUEUE_NAME, redis_url=url, **kwargs)


def admin(server: RedisServer) -> Redis:
    """A direct client for checks (never through a proxy)."""
    return Redis(host="127.0.0.1", port=server.port, socket_timeout=10)


KEYS = Keys(QUEUE_NAME)


async def _value(v: Any) -> Any:
    return await v if inspect.isawaitable(v) else v


async def eventually(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    *,
    progress: Callable[[], Any] | None = None,
) -> float:
    """Poll ``condition`` (sync or async) until truthy; return the seconds it took.

    ``timeout`` is what the wait may take on the reference machine; it is scaled to this one's
    speed. With ``progress`` (sync or async, returning any comparable value), the wait fails
    only when ``condition`` is still false and ``progress`` has not changed for that long.
    """
    limit = scaled(timeout)
    start = last_change = time.monotonic()
    seen = await _value(progress()) if progress is not None else None
    while True:
        if await _value(condition()):
            return time.monotonic() - start
        now = time.monotonic()
        if progress is not None:
            current = await _value(progress())
            if current != seen:
                seen, last_change = current, now
        if now - last_change > limit:
            still = " with no progress" if progress is not None else ""
            raise AssertionError(f"timed out after {limit:.1f}s{still} waiting for {what}")
        await anyio.sleep(interval)


def ledger_size(ledger_dir: Path) -> int:
    """Bytes written to the ledger so far: grows with every job start and end (a progress
    signal for :func:`eventually`)."""
    total = 0
    for path in ledger_dir.glob("*.log"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


async def queue_progress(r: Redis) -> Any:
    """The queue's counters and set sizes: they change whenever a job moves."""
    try:
        async with r.pipeline(transaction=False) as pipe:
            read_movement(pipe, KEYS)
            *sizes, stats = await pipe.execute()
    except Exception:  # Redis restarting: no progress seen
        return None
    return (sorted(stats.items()), *sizes)


@dataclass
class Scenario:
    """What a scenario works with (the ``scenario`` fixture): its workers, its ledger, the
    report, the chaos seed and a random source derived from the seed and the test's id."""

    workers: Workers
    ledger_dir: Path
    report: Report
    seed: int
    rng: random.Random

    def history(self, name: str) -> History:
        """A new history for the scenario ``name`` (the name of its row in the report)."""
        return History(name, self.seed)

    def ledger(self) -> Ledger:
        """The ledger as the tasks have written it so far."""
        return Ledger.read(self.ledger_dir)

    def ledger_size(self) -> int:
        """A progress signal for :func:`eventually` (see :func:`ledger_size`)."""
        return ledger_size(self.ledger_dir)

    async def worker(self, url: str, **flags: Any) -> WorkerProc:
        """A worker on ``url`` (``flags`` as for :meth:`Workers.start`) whose pool is up."""
        proc = self.workers.start(url, **flags)
        await self.workers.wait_children(proc)
        return proc

    async def pair(self, url_a: str, url_b: str) -> tuple[WorkerProc, WorkerProc]:
        """Workers A on ``url_a`` and B on ``url_b``, started together, once both pools are up."""
        a, b = self.workers.start(url_a), self.workers.start(url_b)
        await self.workers.wait_children(a)
        await self.workers.wait_children(b)
        return a, b

    def proxy(self, server: RedisServer, seed: int | None = None) -> ThreadedFaultProxy:
        """A fault proxy in front of ``server``, seeded with the chaos seed unless told."""
        return ThreadedFaultProxy(
            "127.0.0.1", server.port, seed=self.seed if seed is None else seed
        )

    async def finish(
        self, hist: History, server: RedisServer, *, drain_stall: float = 10.0, **check_kwargs: Any
    ) -> dict[str, Any]:
        """Drain, check and report: the common end of every scenario.

        The drain has no deadline: it fails when the queue has not moved for ``drain_stall``
        seconds (scaled to the machine's speed; longer than any job or fault of the plan)."""
        async with admin(server) as r:
            drained = await drain(r, KEYS, scaled(drain_stall))
            snap = await snapshot(r, KEYS)
        record = check(hist, snap, self.ledger(), **check_kwargs)
        record["drain_s"] = round(drained, 2)
        record["slowdown"] = round(SLOWDOWN, 2)
        self.report.add(record)
        return record


async def submit_lanes(
    hist: History, q: Queue, tags: list[str], *args: object, lanes: int = 4, tries: int = 10
) -> None:
    """Submit one job of :data:`WORK` per tag, ``lanes`` submits at a time (each its own round
    trip); an errored submit is tried again, ``tries`` times in all, 50 ms apart."""

    async def lane(k: int) -> None:
        for tag in tags[k::lanes]:
            for attempt in range(tries):
                if attempt:
                    await anyio.sleep(0.05)
                if await hist.submit(tag, q.submit(WORK, tag, *args)) is not None:
                    break

    async with anyio.create_task_group() as tg:
        for k in range(lanes):
            tg.start_soon(lane, k)


async def keyed_submit(
    hist: History,
    q: Queue,
    tag: str,
    task: str,
    *args: object,
    delay: float | None = None,
    tries: int = 10,
) -> Any:
    """Submit one job under the de-duplication key ``tag``, trying again on errors (``tries``
    times in all): a submit whose every reply was lost may have gone through, and its key makes
    the retry find it. Fails the scenario if no try went through."""
    opts = q.options(key=tag, delay=delay) if delay else q.options(key=tag)
    for _ in range(tries):
        job = await hist.submit(tag, opts.submit(task, tag, *args))
        if job is not None:
            return job
        await anyio.sleep(0.05)
    raise AssertionError(f"{tag}: no submit went through: {hist.errored.get(tag)}")


def recovery_bound_ms(margin: float) -> float:
    """The recovery guarantee after a worker stops heartbeating: its leases expire within
    ``LEASE`` and the next maintenance pass (every ``MAINTENANCE``) hands them back; ``margin``
    (seconds on the reference machine, for scheduling and the rerun itself) is scaled to this
    machine's measured speed so that the assertion holds under load."""
    return (LEASE + MAINTENANCE + scaled(margin)) * 1000


def summary(record: dict[str, Any]) -> str:
    keys = ("lost", "unexpected", "dup_exec", "dup_results", "fenced", "recovered", "details")
    return str({k: record.get(k) for k in keys})
