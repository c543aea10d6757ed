"""Harness of the chaos suite: worker subprocesses, /proc helpers and the end of a scenario.

Workers are real ``python -m aioqueue`` subprocesses so that SIGKILL, SIGTERM and SIGSTOP are
real; :class:`Workers` tracks them and, at teardown, kills what is left and reports any child
process of a worker that outlived its supervisor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from aioqueue import Queue
from aioqueue.keys import Keys
from aioqueue.testing import RedisServer

from .history import History, Ledger, Report, check, drain, snapshot
from .ledger_tasks import LEDGER_ENV, QUEUE_ENV

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
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
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
        self.popen.wait(10)
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
        """Wait until ``proc`` has ``n`` live children (its pool is up)."""
        deadline = time.monotonic() + timeout
        while True:
            kids = proc.children()
            if len(kids) >= n:
                return kids
            if not proc.running:
                raise AssertionError(f"{proc} exited with {proc.returncode}: {proc.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc} has {kids} children after {timeout}s")
            await anyio.sleep(0.02)

    async def assert_no_orphans(self, timeout: float = 3.0) -> None:
        """No process of this test's workers is alive unless its supervisor is."""
        deadline = time.monotonic() + timeout
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
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
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
                p.popen.wait(10)
        deadline = time.monotonic() + 3.0
        strays = marked_pids(self.marker)
        while strays and time.monotonic() < deadline:
            time.sleep(0.02)
            strays = marked_pids(self.marker)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return strays


# -- scenario plumbing --------------------------------------------------------------------------


def producer(url: str, **kwargs: Any) -> Queue:
    """A producer-side Queue for the chaos queue (tasks submitted by name)."""
    kwargs.setdefault("connect_timeout", 1.0)
    return Queue(QUEUE_NAME, redis_url=url, **kwargs)


def admin(server: RedisServer) -> Redis:
    """A direct client for checks (never through a proxy)."""
    return Redis(host="127.0.0.1", port=server.port, socket_timeout=10)


KEYS = Keys(QUEUE_NAME)


async def eventually(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> float:
    """Poll ``condition`` (sync or async) until truthy; return the seconds it took."""
    start = time.monotonic()
    while True:
        value = condition()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await anyio.sleep(interval)


async def finish(
    hist: History,
    server: RedisServer,
    ledger_dir: Path,
    report: Report,
    *,
    drain_timeout: float = 20.0,
    **check_kwargs: Any,
) -> dict[str, Any]:
    """Drain, check and report: the common end of every scenario."""
    async with admin(server) as r:
        drained = await drain(r, KEYS, drain_timeout)
        snap = await snapshot(r, KEYS)
    record = check(hist, snap, Ledger.read(ledger_dir), **check_kwargs)
    record["drain_s"] = round(drained, 2)
    report.add(record)
    return record


def summary(record: dict[str, Any]) -> str:
    keys = ("lost", "unexpected", "dup_exec", "dup_results", "fenced", "recovered", "details")
    return str({k: record.get(k) for k in keys})
