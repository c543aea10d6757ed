"""Fixtures: a private redis-server for the session, the test queue, and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from aioqueue import Queue
from aioqueue.testing import RedisServer
from tests import tasks
from tests._async import eventually

ROOT = Path(__file__).resolve().parent.parent

# Sub-second settings so that recovery and retries happen within a test's time.
FAST = [
    "--heartbeat", "0.2", "--lease", "1.0", "--maintenance-interval", "0.2",
    "--block-timeout", "0.5", "--retry-backoff", "0.05", "--kill-grace", "0.5",
]  # fmt: skip


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one test process more than there are cores. Most tests spend their time
    waiting for worker processes and Redis, so with one per core the cores sit partly idle
    (on 2 cores: 58 s for the suite, against 53 s with 3 test processes)."""
    return (os.cpu_count() or 1) + 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session (never a shared one)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    return redis_server.url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as r:
        yield r


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    """The tests' queue (tests/tasks.py), connected to the private server."""
    tasks.queue.redis_url = redis_url
    async with tasks.queue as q:
        yield q


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class WorkerProcess:
    """An ``aioqueue-worker`` subprocess serving tests/tasks.py's queue."""

    def __init__(
        self,
        redis_url: str,
        log: Path,
        *args: str,
        processes: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.args = ["--processes", str(processes), *FAST, *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log
        self.env = env or {}

    def start(self) -> WorkerProcess:
        """Start the process; :meth:`ready` waits until it serves the queue."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self._logfile = open(self.log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aioqueue", "tests.tasks:queue", "--redis-url",
             self.redis_url, "--log-level", "info", *self.args],
            cwd=ROOT, env=env, stdout=self._logfile, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    async def ready(self) -> WorkerProcess:
        """Wait until the worker's children are up and its first heartbeat is in Redis."""
        await eventually(lambda: len(children_of(self.pid)) >= 1, 30, "worker children")
        r = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            await eventually(
                lambda: self._registered(r), 30, f"worker heartbeat; log: {self.output()[-500:]}"
            )
        finally:
            await r.aclose()
        assert self.proc is not None and self.proc.poll() is None, "worker exited during start"
        return self

    async def _registered(self, r: redis.asyncio.Redis) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or await r.zcard(tasks.queue.keys.workers) > 0

    async def exited(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.proc is not None
        proc = self.proc
        await eventually(lambda: proc.poll() is not None, timeout, "worker exit")
        return proc.returncode

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        """What the worker has logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until the worker's log contains ``text``."""
        await eventually(lambda: text in self.output(), timeout, f"worker log line {text!r}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if hasattr(self, "_logfile"):
            self._logfile.close()


StartWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Start real worker subprocesses (``await start_worker(*flags)``, ready to serve unless
    ``wait=False``); all are stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[WorkerProcess] = []

    async def start(
        *args: str, processes: int = 1, wait: bool = True, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        w = WorkerProcess(redis_url, log, *args, processes=processes, env=env).start()
        started.append(w)
        return await w.ready() if wait else w

    yield start
    for w in started:
        w.stop()
