"""What every benchmark script shares; standard library only.

``scaling.py`` and ``throughput.py`` import it, and so do the peers benchmark's driver, its cell
runner and its adapters, which run inside each peer's own virtualenv (where neither aioqueue nor
anything else of this project is installed). So nothing here imports beyond the standard library;
aioqueue's test server is loaded from its file when the package is not importable.

* the CPU-bound job (:func:`burn_loop`) and its :func:`calibrate`\\ion;
* Redis: :func:`redis_url_or_private`, :func:`redis_version`;
* the machine: :func:`machine_info`, and the processes on it from ``/proc``
  (:func:`proc_stats`, :func:`descendants`, :func:`rss_kib`, :func:`kill_tree`);
* other load: :class:`CpuMeter` splits the machine's CPU time into this benchmark's process tree
  and everybody else's, and :func:`load_verdict` says in words when the machine was busy;
* :class:`Worker`: a worker command as a subprocess, with its log, stopped with its whole tree;
* waiting: :func:`wait_until`, :func:`watch`, :func:`run_async`;
* output: :func:`format_table`, :class:`Progress`, :func:`percentile`, and
  :func:`report_to` / :func:`write_json` under ``--out`` (default ``results/`` at the repository
  root, which git ignores: the figures under ``benchmarks/results/`` are the published ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import unquote, urlsplit

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUT = REPO_ROOT / "results"


# -- the CPU-bound job ---------------------------------------------------------------------


def burn_loop(iterations: int) -> int:
    """Pure-Python integer arithmetic: ``iterations`` rounds, no I/O, no allocation to speak of."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) % 1_000_003
    return acc


@dataclass
class Calibration:
    """The job's fixed cost: ``burn_loop(iterations)`` takes ``compute_ms`` of CPU time here.

    CPU time rather than elapsed time, so that other load on the machine while calibrating does
    not shrink the job; ``wall_ms`` is the elapsed time of the same calls, for comparison.
    """

    iterations: int
    compute_ms: float
    wall_ms: float
    target_ms: float
    samples_ms: list[float]
    checksum: int


def calibrate(target_ms: float, rounds: int = 5) -> Calibration:
    """Find ``iterations`` so that ``burn_loop(iterations)`` takes about ``target_ms`` here."""
    iterations = 1000
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        t = time.thread_time()
        burn_loop(iterations)
        if (time.thread_time() - t) * 1000 >= target_ms / 4:
            break
        iterations *= 4
    samples, walls = _time_burn(iterations, rounds)
    for i in range(6):  # twice at least; more while the machine's speed moves it off target
        if i >= 2 and abs(percentile(samples, 50) / target_ms - 1) <= 0.1:
            break
        iterations = max(1, round(iterations * target_ms / percentile(samples, 50)))
        samples, walls = _time_burn(iterations, rounds)
    return Calibration(
        iterations=iterations,
        compute_ms=percentile(samples, 50),
        wall_ms=percentile(walls, 50),
        target_ms=target_ms,
        samples_ms=[round(s, 4) for s in samples],
        checksum=burn_loop(iterations),
    )


def _time_burn(iterations: int, rounds: int) -> tuple[list[float], list[float]]:
    """CPU and elapsed milliseconds of ``rounds`` calls of ``burn_loop(iterations)``."""
    cpu, wall = [], []
    for _ in range(rounds):
        t, w = time.thread_time(), time.perf_counter()
        burn_loop(iterations)
        cpu.append((time.thread_time() - t) * 1000)
        wall.append((time.perf_counter() - w) * 1000)
    return cpu, wall


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (the first ones get the extra)."""
    if parts < 1 or total < parts:
        raise ValueError(f"{total} can't be spread over {parts} parts")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# -- Redis ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisTarget:
    """The Redis a benchmark runs against; ``pid`` is known when the benchmark started it."""

    url: str
    private: bool
    pid: int | None


def _redis_server_class() -> Any:
    """``aioqueue.testing.RedisServer``, loaded from its file where the package is not installed."""
    try:
        from aioqueue.testing import RedisServer
    except ImportError:
        path = REPO_ROOT / "aioqueue" / "testing.py"
        spec = importlib.util.spec_from_file_location("_aioqueue_testing", path)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module.RedisServer
    return RedisServer


@contextlib.contextmanager
def redis_url_or_private(url: str | None) -> Iterator[RedisTarget]:
    """Yield ``url``; without one, start a private ``redis-server`` for as long as it is used."""
    if url:
        yield RedisTarget(url, private=False, pid=None)
        return
    with _redis_server_class()() as server:
        pid = server.process.pid if server.process is not None else None
        yield RedisTarget(str(server.url), private=True, pid=pid)


def redis_version(url: str, timeout: float = 5.0) -> str:
    """The ``redis_version`` the server at ``url`` reports (``INFO server``), or ``"unknown"``."""
    parts = urlsplit(url)
    user, password = unquote(parts.username or "default"), unquote(parts.password or "")
    try:
        if parts.scheme == "unix":
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(timeout)
            conn.connect(parts.path)
        else:
            conn = socket.create_connection((parts.hostname, parts.port or 6379), timeout)
        with conn, conn.makefile("rb") as reply:
            if parts.password:
                conn.sendall(_resp([b"AUTH", user.encode(), password.encode()]))
                reply.readline()
            conn.sendall(_resp([b"INFO", b"server"]))
            header = reply.readline()
            text = (
                reply.read(int(header[1:])).decode(errors="replace") if header[:1] == b"$" else ""
            )
    except (OSError, ValueError):
        return "unknown"
    for line in text.splitlines():
        if line.startswith("redis_version:"):
            return line.partition(":")[2].strip()
    return "unknown"


def _resp(command: Sequence[bytes]) -> bytes:
    return b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in command)


def fresh_queue_name(prefix: str) -> str:
    """A queue name not used before: fresh counters, and no worker registered on it yet."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
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


# -- processes, from /proc -----------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    """One process from ``/proc/PID/stat``: its parent, state and CPU seconds.

    ``cpu_s`` is its own user + system time; ``reaped_cpu_s`` what its children that it waited
    for used (the kernel adds a child's time to its parent's when the parent reaps it).
    """

    pid: int
    ppid: int
    state: str
    cpu_s: float
    reaped_cpu_s: float


def proc_stat(pid: int) -> ProcStat | None:
    """Process ``pid``, or None when it is gone (or there is no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = [int(v) for v in fields[11:15]]
        return ProcStat(pid, int(fields[1]), fields[0], (ticks[0] + ticks[1]) / _CLK_TCK,
                        (ticks[2] + ticks[3]) / _CLK_TCK)  # fmt: skip
    except (IndexError, ValueError):
        return None


def proc_stats() -> dict[int, ProcStat]:
    """Every process on the machine, in one scan of ``/proc``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    found = (proc_stat(int(e)) for e in entries if e.isdigit())
    return {s.pid: s for s in found if s is not None}


def descendants(pid: int, stats: dict[int, ProcStat] | None = None) -> list[int]:
    """The live (not zombie) children of ``pid``, their children, and so on."""
    stats = proc_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for s in stats.values():
        if s.state != "Z":
            children.setdefault(s.ppid, []).append(s.pid)
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return sorted(out)


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    return sorted(s.pid for s in proc_stats().values() if s.ppid == pid and s.state != "Z")


def rss_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of process ``pid`` in KiB from ``/proc/PID/status``; 0 if unknown."""
    values = _status(f"/proc/{pid}/status", "VmRSS", "VmHWM")
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def _status(path: str, *keys: str) -> dict[str, int]:
    """The numbers a ``/proc/.../status`` file gives for ``keys`` (those it has)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0])
    return values


def wakeups(pid: int) -> int:
    """How many times the threads of process ``pid`` gave up the CPU to wait for something
    (voluntary context switches, from ``/proc/PID/task/*/status``): each is a wake-up later, and
    on a VM a wake-up costs 0.1 to 0.4 ms of CPU whatever the work it wakes for, the more the
    longer the process idled before it. 0 if unknown."""
    key = "voluntary_ctxt_switches"
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    return sum(_status(f"/proc/{pid}/task/{tid}/status", key).get(key, 0) for tid in tids)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, all its descendants, and its process group (best effort)."""
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def system_cpu_seconds() -> float:
    """CPU seconds all cores have spent running processes since boot (``/proc/stat``).

    User, nice and system time: not idle or iowait, and not interrupt time, which the kernel
    spends on whoever's packets (the benchmark's own Redis traffic included).
    """
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            parts = f.readline().split()
    except OSError:
        return 0.0
    if not parts or parts[0] != "cpu":
        return 0.0
    return sum(int(v) for v in parts[1:4]) / _CLK_TCK


# -- other load ----------------------------------------------------------------------------

# Other processes' CPU, averaged over a span, above which the figures are called untrustworthy.
BUSY_CORES = 0.15
# Each process's CPU time is read in clock ticks: allow one tick per process read, per sample.
_TICK_S = 1.0 / _CLK_TCK


class CpuMeter:
    """CPU time used between :meth:`start` and :meth:`stop`: this benchmark's and the rest's.

    The benchmark is the process tree under ``root`` (default: this process), children it has
    reaped included; ``others`` is the machine's CPU time less that, so anything else running
    shows up. ``groups`` name lists of pids (``supervisor``, ``children``, ``redis`` ...) whose
    own CPU time is reported too.
    """

    def __init__(self, groups: dict[str, list[int]] | None = None, root: int | None = None):
        self.groups = groups or {}
        self.root = os.getpid() if root is None else root
        self._start: tuple[float, float, float, dict[str, float], int] | None = None
        self._wakes: dict[str, int] = {}
        self.used: dict[str, float] = {}
        self.wakeups: dict[str, int] = {}  # per group, between start and stop (see wakeups())

    def _wakeups(self) -> dict[str, int]:
        return {name: sum(wakeups(p) for p in pids) for name, pids in self.groups.items()}

    def _sample(self) -> tuple[float, float, float, dict[str, float], int]:
        t = time.perf_counter()
        system = system_cpu_seconds()
        stats = proc_stats()
        tree = [self.root, *descendants(self.root, stats)]
        own = sum(s.cpu_s + s.reaped_cpu_s for p in tree if (s := stats.get(p)))
        per_group = {
            name: sum(s.cpu_s for p in pids if (s := stats.get(p)))
            for name, pids in self.groups.items()
        }
        return t, system, own, per_group, len(tree)

    def start(self) -> CpuMeter:
        """Take the first sample."""
        self._wakes = self._wakeups()
        self._start = self._sample()
        return self

    @property
    def started_at(self) -> float:
        """When :meth:`start` was called (``time.perf_counter()``)."""
        return self._start[0] if self._start else 0.0

    def stop(self) -> dict[str, float]:
        """Take the second sample; returns CPU seconds per group, ``own``, ``others``, ``wall``.

        ``others_cores`` is ``others / wall``; ``noise_s`` is how far the tick-rounded readings
        could be off, so ``others`` under it is not a sign of anything.
        """
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        t0, system0, own0, group0, n0 = self._start
        t1, system1, own1, group1, n1 = self._sample()
        wakes = self._wakeups()
        self.wakeups = {name: max(n - self._wakes.get(name, 0), 0) for name, n in wakes.items()}
        wall = max(t1 - t0, 1e-9)
        own = max(own1 - own0, 0.0)
        others = max(system1 - system0 - own, 0.0)
        self.used = {name: max(group1[name] - group0.get(name, 0.0), 0.0) for name in group1}
        self.used.update(
            own=own,
            others=others,
            wall=wall,
            others_cores=others / wall,
            noise_s=_TICK_S * (n0 + n1 + 2 * (os.cpu_count() or 1)),
        )
        return dict(self.used)


def is_busy(used: dict[str, float]) -> bool:
    """Whether a :meth:`CpuMeter.stop` reading shows other load beyond the readings' noise."""
    return used["others"] > BUSY_CORES * used["wall"] + used["noise_s"]


class OtherLoad:
    """What the rest of the machine used: a look just before a benchmark (:meth:`look`), then
    all through it (:meth:`start`, :meth:`stop`); :meth:`verdict` says it in words."""

    def __init__(self) -> None:
        self.before: dict[str, float] = {}
        self.during: dict[str, float] = {}
        self._meter: CpuMeter | None = None

    def look(self, seconds: float) -> OtherLoad:
        """Watch the machine for ``seconds`` before anything starts."""
        meter = CpuMeter().start()
        time.sleep(seconds)
        self.before = meter.stop()
        return self

    def start(self) -> None:
        self._meter = CpuMeter().start()

    def stop(self) -> None:
        if self._meter is not None:
            self.during = self._meter.stop()

    def verdict(self) -> str:
        return load_verdict(self.before, self.during)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"before": self.before, "during": self.during}


def load_verdict(before: dict[str, float], during: dict[str, float]) -> str:
    """One sentence on other load: before the benchmark started and while it ran."""
    cores = os.cpu_count() or 1
    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    said = (
        f"other processes used {before['others_cores']:.2f} of this machine's {cores} cores "
        f"just before the run and {during['others_cores']:.2f} during it "
        f"({during['others']:.1f} CPU-s in {during['wall']:.1f} s); load average {loadavg:.2f}"
    )
    if is_busy(before) or is_busy(during):
        return (
            f"WARNING: the machine was busy: {said}. The benchmark's processes had to share the "
            "CPU with them, so the rates, speedups and efficiencies above are NOT trustworthy; "
            "rerun on an idle machine."
        )
    return f"other load: too little to matter: {said}."


# -- worker subprocesses -------------------------------------------------------------------


class Worker:
    """A worker command run as a subprocess (a session of its own), its output in ``log_path``.

    :meth:`stop` sends SIGTERM and waits up to ``grace`` seconds, then kills whatever is left of
    its process tree; :meth:`log_tail` shows its output when something goes wrong.
    """

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path = BENCH_DIR,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The worker's process id."""
        if self.proc is None:
            raise RuntimeError("worker not started")
        return self.proc.pid

    def start(self) -> Worker:
        """Start the command."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def exited(self) -> int | None:
        """Its exit code once it has exited, else None."""
        return self.proc.poll() if self.proc is not None else None

    def check_alive(self) -> None:
        """:raises RuntimeError: with the end of its log, if the worker has exited."""
        if self.exited is not None:
            raise RuntimeError(
                f"worker (pid {self.pid}) exited with code {self.exited}:\n{self.log_tail()}"
            )

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL its tree; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if grace > 0 and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        if proc.poll() is None:
            kill_tree(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return proc.returncode

    def memory(self) -> dict[str, Any]:
        """RSS of the worker and of each child, in KiB (VmRSS now, VmHWM the peak)."""
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


# -- waiting -------------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.01,
    check: Callable[[], None] | None = None,
) -> float:
    """Poll ``condition`` (sync or async) every ``interval`` s until it is true or time is up.

    :param check: called on every round; raise from it to give up early (e.g. a worker died).
    :returns: the seconds it took.
    :raises TimeoutError: naming ``what``, when the deadline passes first.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if check is not None:
            check()
        done = condition()
        if await done if inspect.isawaitable(done) else done:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def watch(work: Awaitable[T], check: Callable[[], None], interval: float = 0.2) -> T:
    """Await ``work`` while calling ``check`` every ``interval`` s (raise from it to give up)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            check()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def in_lanes(call: Callable[[], Awaitable[object]], n: int, lanes: int) -> None:
    """Make ``n`` calls from ``lanes`` coroutines at once, each making its next call when its
    last one returns (a fixed number of callers, as concurrent producers are)."""
    remaining = n

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    await asyncio.gather(*(lane() for _ in range(min(lanes, n))))


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed (as the worker does), else on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional where it doesn't install
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- statistics and output -----------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, interpolated linearly; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(max(p, 0.0), 100.0) / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``rows`` as an aligned plain-text table: text left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        parts = [
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt(row) for row in cells[1:]])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print :func:`format_table`."""
    print(format_table(headers, rows), flush=True)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cell(v: object) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    if _is_number(v):
        return f"{v:,}"
    return str(v)


class Progress:
    """A one-line progress bar on stderr, redrawn in place with ``\\r``.

    It draws nothing when stderr is not a terminal or when ``enabled`` is False, and redraws at
    most ``hz`` times a second.
    """

    def __init__(self, total: int, label: str, *, enabled: bool = True, hz: float = 10.0) -> None:
        self.total = max(total, 1)
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self._min_interval = 1.0 / hz
        self._last = 0.0
        self._start = time.perf_counter()

    def update(self, done: int, *, force: bool = False) -> None:
        """Show ``done`` of ``total``, with the rate so far."""
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self._min_interval):
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(
            f"\r{self.label} [{bar}] {done}/{self.total} {frac * 100:5.1f}% "
            f"{rate:8.1f}/s {elapsed:6.1f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        """Erase the bar, leaving the cursor at the start of an empty line."""
        if self.enabled and self._last:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


class _Tee:
    """A text stream writing to two others."""

    def __init__(self, *streams: IO[str]) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def report_to(out: Path, name: str) -> Iterator[Path]:
    """Print to stdout and to ``out/name.txt`` as well; yields that path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.txt"
    with (
        open(path, "w", encoding="utf-8") as f,
        contextlib.redirect_stdout(_Tee(sys.stdout, f)),
    ):
        yield path


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path``; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def out_help(name: str) -> str:
    """The ``--out`` option's help text for script ``name``."""
    return (
        f"folder for {name}.txt, {name}.json and the like (default: results/ at the repository "
        "root, results/quick/ with --quick; git ignores both)"
    )


def out_dir(out: Path | None, quick: bool) -> Path:
    """``--out``, or the default for a full or a quick run."""
    if out is not None:
        return out
    return DEFAULT_OUT / "quick" if quick else DEFAULT_OUT
