"""What the benchmark scripts share: Redis, workers, machine description, statistics, output.

* :func:`redis_url_or_private` yields the given Redis URL, or starts a private ``redis-server``
  (:class:`aioqueue.testing.RedisServer`) for the duration of the benchmark.
* :class:`WorkerProcess` runs ``python -m aioqueue bench_tasks:queue`` as a subprocess on a
  queue of its own, and stops it with SIGTERM, a bounded wait, then SIGKILL.
* :func:`machine_info`, :func:`percentile`, :func:`print_table`, :class:`Progress` and
  :func:`wait_until` (poll a condition until a deadline) are the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import bench_tasks
import redis

from aioqueue import Queue
from aioqueue.testing import RedisServer

__all__ = (
    "BENCH_DIR",
    "CpuMeter",
    "Progress",
    "RedisTarget",
    "WorkerProcess",
    "child_pids",
    "cleanup_queue",
    "fresh_queue_name",
    "machine_info",
    "make_queue",
    "percentile",
    "print_table",
    "redis_url_or_private",
    "rss_kib",
    "run_async",
    "wait_until",
)

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
TASKS_SPEC = "bench_tasks:queue"


# -- Redis and queues ----------------------------------------------------------------------


@dataclass(frozen=True)
class RedisTarget:
    """The Redis a benchmark runs against; ``pid`` is known when the benchmark started it."""

    url: str
    private: bool
    pid: int | None


@contextlib.contextmanager
def redis_url_or_private(url: str | None) -> Iterator[RedisTarget]:
    """Yield ``url``; without one, start a private ``redis-server`` for as long as it is used."""
    if url:
        yield RedisTarget(url, private=False, pid=None)
        return
    with RedisServer() as server:
        pid = server.process.pid if server.process is not None else None
        yield RedisTarget(server.url, private=True, pid=pid)


def fresh_queue_name(prefix: str) -> str:
    """A queue name not used before: fresh counters, and no worker registered on it yet."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_queue(name: str, redis_url: str) -> Queue:
    """A producer-side queue named ``name`` with the benchmark tasks registered on it.

    The tasks keep their registered names (``bench_tasks.burn``, ``bench_tasks.noop``), so a
    worker that imports ``bench_tasks:queue`` with ``$AIOQUEUE_BENCH_QUEUE=name`` runs them.
    """
    queue = Queue(name, redis_url=redis_url)
    queue.task(bench_tasks.noop)
    queue.task(bench_tasks.burn)
    return queue


def cleanup_queue(redis_url: str, name: str) -> int:
    """Delete every key of queue ``name`` (for runs against a Redis the benchmark did not start).

    :returns: how many keys were deleted.
    """
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[Any] = []
        for key in client.scan_iter(match=f"aioqueue:{{{name}}}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


def redis_version(redis_url: str) -> str:
    """The ``redis_version`` the server reports, or ``"unknown"``."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        info: dict[str, Any] = client.info("server")
        return str(info.get("redis_version", "unknown"))
    except redis.RedisError:
        return "unknown"
    finally:
        client.close()


# -- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(redis_url: str) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, Python, Redis, OS."""
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count() or 1,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "redis_server": redis_version(redis_url),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
    }


def describe_machine(machine: dict[str, Any]) -> str:
    """One line for the report."""
    return (
        f"{machine['cpu_model']}, {machine['logical_cores']} logical cores, "
        f"Python {machine['python']}, Redis {machine['redis_server']}, {machine['os']}"
    )


# -- statistics and output -----------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, interpolated linearly; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * min(max(p, 0.0), 100.0) / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], file: IO[str] | None = None
) -> None:
    """Print ``rows`` as an aligned plain-text table: text left-aligned, numbers right-aligned."""
    out = file or sys.stdout
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        parts = [
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(fmt(cells[0]), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells[1:]:
        print(fmt(row), file=out)
    out.flush()


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cell(v: object) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


class Progress:
    """A one-line progress bar on stderr, redrawn in place with ``\\r``.

    It draws nothing when stderr is not a terminal or when ``enabled`` is False, and redraws at
    most ``hz`` times a second.
    """

    def __init__(
        self, total: int, label: str, *, enabled: bool = True, width: int = 30, hz: float = 10.0
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.width = width
        self.enabled = enabled and sys.stderr.isatty()
        self._min_interval = 1.0 / hz
        self._last = 0.0
        self._start = time.perf_counter()
        self._shown = False

    def update(self, done: int, *, force: bool = False) -> None:
        """Show ``done`` of ``total``, with the rate so far."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self._min_interval and done < self.total:
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        line = (
            f"\r{self.label} [{bar}] {done}/{self.total} {frac * 100:5.1f}% "
            f"{rate:8.1f}/s {elapsed:6.1f}s"
        )
        sys.stderr.write(line)
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        """Erase the bar, leaving the cursor at the start of an empty line."""
        if self.enabled and self._shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
        self._shown = False


# -- waiting -------------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.01,
    check: Callable[[], None] | None = None,
) -> float:
    """Poll ``condition`` every ``interval`` seconds until it is true or ``timeout`` passes.

    :param check: called on every round; raise from it to give up early (e.g. a worker died).
    :returns: the seconds it took.
    :raises TimeoutError: naming ``what``, when the deadline passes first.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if check is not None:
            check()
        if await condition():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed (as the worker does), else on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional where it doesn't install
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- CPU accounting ------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (``/proc/PID/stat``); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (IndexError, ValueError):
        return 0.0


def system_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``); 0 if unknown."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            parts = f.readline().split()
    except OSError:
        return 0.0
    if not parts or parts[0] != "cpu":
        return 0.0
    values = [int(v) for v in parts[1:]] + [0] * 10
    # user, nice, system, irq, softirq; not idle, iowait, steal, or guest (counted in user)
    return (values[0] + values[1] + values[2] + values[5] + values[6]) / _CLK_TCK


@dataclass
class CpuMeter:
    """CPU time used between :meth:`start` and :meth:`stop`, per group of processes.

    Groups are named lists of pids (``supervisor``, ``children``, ``redis`` ...); this process
    is the ``producer``. ``others`` is what the rest of the machine used meanwhile: the
    system-wide busy time less every group's, so a busy machine shows up in the report.
    """

    groups: dict[str, list[int]]
    start_cpu: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    _busy0: float = 0.0
    _t0: float = 0.0
    wall: float = 0.0

    def _sample(self) -> dict[str, float]:
        out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        out["producer"] = time.process_time()
        return out

    def start(self) -> None:
        """Take the first sample."""
        self.start_cpu = self._sample()
        self._busy0 = system_busy_seconds()
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Take the second sample; returns CPU seconds per group, ``others`` and ``wall``."""
        end = self._sample()
        busy = system_busy_seconds() - self._busy0
        self.wall = time.perf_counter() - self._t0
        self.used = {name: max(end[name] - self.start_cpu.get(name, 0.0), 0.0) for name in end}
        self.used["others"] = max(busy - sum(self.used.values()), 0.0)
        self.used["wall"] = self.wall
        return dict(self.used)


# -- worker processes ----------------------------------------------------------------------


def rss_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of process ``pid`` in KiB from ``/proc/PID/status``; 0 if unknown."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid``, found by the parent pid in ``/proc/*/stat``."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (field 2) is in parentheses and may itself hold spaces or ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2 and fields[0] != "Z" and fields[1] == str(pid):
            out.append(int(entry))
    return sorted(out)


class WorkerProcess:
    """One worker supervisor (``python -m aioqueue bench_tasks:queue``) as a subprocess.

    Its output goes to ``log_path``; :meth:`log_tail` shows it when something goes wrong.
    """

    def __init__(
        self,
        queue_name: str,
        redis_url: str,
        processes: int,
        log_path: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.queue_name = queue_name
        self.redis_url = redis_url
        self.processes = processes
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def command(self) -> list[str]:
        """The command line the worker runs with."""
        return [
            sys.executable, "-m", "aioqueue", TASKS_SPEC,
            "--processes", str(self.processes),
            "--redis-url", self.redis_url,
            "--log-level", "warning",
            *self.extra_args,
        ]  # fmt: skip

    @property
    def pid(self) -> int:
        """The supervisor's process id."""
        if self.proc is None:
            raise RuntimeError("worker not started")
        return self.proc.pid

    def start(self) -> None:
        """Start the supervisor in the benchmarks directory, so it imports ``bench_tasks``."""
        env = dict(os.environ)
        env[bench_tasks.QUEUE_ENV] = self.queue_name
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(BENCH_DIR) + (os.pathsep + path if path else "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=BENCH_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.perf_counter()

    def check_alive(self) -> None:
        """:raises RuntimeError: with the end of its log, if the worker has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"worker (pid {self.proc.pid}) exited with code {self.proc.returncode}:\n"
                f"{self.log_tail()}"
            )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
        return proc.returncode

    def memory(self) -> dict[str, Any]:
        """RSS of the supervisor and of each child, in KiB (VmRSS now, VmHWM the peak)."""
        sup_rss, sup_hwm = rss_kib(self.pid)
        children = [(pid, *rss_kib(pid)) for pid in child_pids(self.pid)]
        return {
            "supervisor_pid": self.pid,
            "supervisor_rss_kib": sup_rss,
            "supervisor_hwm_kib": sup_hwm,
            "children": [{"pid": p, "rss_kib": r, "hwm_kib": h} for p, r, h in children],
            "children_rss_kib": sum(r for _, r, _ in children),
        }

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the worker's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def split_processes(processes: int, workers: int) -> list[int]:
    """Children per supervisor: ``processes`` spread over ``workers`` as evenly as possible."""
    if workers < 1 or processes < workers:
        raise ValueError(f"{processes} processes can't be spread over {workers} workers")
    base, extra = divmod(processes, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]
