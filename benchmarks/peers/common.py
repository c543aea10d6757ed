"""Shared runtime for the peers benchmark: the CPU job, completion counting, and the cell runner.

This module is imported by every ``<name>_bench.py`` adapter, inside that peer's own virtualenv and
inside its worker processes, so it depends only on the standard library and ``redis`` (redis-py).

Run as a script it executes one benchmark *cell* (one framework, one settings variant, one
workload, one worker-process count) against the Redis at ``BENCH_REDIS_URL`` and prints a single
JSON line with the result::

    python common.py --adapter arq_bench --variant best --workload noop --processes 2 \
        --n 2000 --iterations 150000 --timeout 120

Completions are counted identically for every framework: each job runs one atomic script that
``INCR``\\s the counter key ``BENCH_COUNTER``; the job that takes it to 1 stores its wall-clock
time under ``<key>:first`` and the one that takes it to ``N`` under ``<key>:last``. Throughput is
``(N - 1) / (last - first)``, i.e. measured from the first completion to the last one, so worker
start-up time is excluded (it is reported separately as ``startup_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis

BENCH_DIR = Path(__file__).resolve().parent
COUNTER_DEFAULT = "bench:done"
POLL_INTERVAL_S = 0.005
WORKLOADS = ("enqueue", "noop", "cpu")


def redis_url() -> str:
    """The private Redis URL handed over by the driver (never a default server)."""
    url = os.environ.get("BENCH_REDIS_URL")
    if not url:
        raise RuntimeError("BENCH_REDIS_URL is not set: run this through benchmarks/peers/run.py")
    return url


def counter_key() -> str:
    """The Redis key that every completed job increments."""
    return os.environ.get("BENCH_COUNTER", COUNTER_DEFAULT)


def target_n() -> int:
    """How many completions the current cell waits for."""
    return int(os.environ.get("BENCH_N", "0"))


def variant() -> str:
    """The settings variant the current process belongs to (``best`` or ``defaults``)."""
    return os.environ.get("BENCH_VARIANT", "best")


def workload() -> str:
    """The workload the current process belongs to (``enqueue``, ``noop`` or ``cpu``)."""
    return os.environ.get("BENCH_WORKLOAD", "noop")


def burn_loop(iterations: int) -> int:
    """The CPU-bound job body: a pure-Python integer loop, identical for every framework."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def calibrate(target_s: float = 0.020, rounds: int = 5) -> tuple[int, float]:
    """Find the iteration count that makes :func:`burn_loop` take about ``target_s`` seconds.

    :returns: ``(iterations, measured_seconds)`` where the measurement is the median of ``rounds``.
    """
    iterations = 10_000
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        start = time.perf_counter()
        burn_loop(iterations)
        elapsed = time.perf_counter() - start
        if elapsed >= target_s / 4:
            iterations = max(1, int(iterations * target_s / elapsed))
            break
        iterations *= 4
    samples: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        burn_loop(iterations)
        samples.append(time.perf_counter() - start)
    samples.sort()
    iterations = max(1, int(iterations * target_s / samples[len(samples) // 2]))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        burn_loop(iterations)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return iterations, samples[len(samples) // 2]


COUNT_LUA = """
local done = redis.call('INCR', KEYS[1])
if done == 1 then redis.call('SET', KEYS[2], ARGV[2]) end
if done == tonumber(ARGV[1]) then redis.call('SET', KEYS[3], ARGV[2]) end
return done
"""

_sync_counter: tuple[int, Any] | None = None
_async_counters: dict[tuple[int, int], Any] = {}


def _count_keys() -> list[str]:
    key = counter_key()
    return [key, f"{key}:first", f"{key}:last"]


def count_sync() -> None:
    """Count one completed job (for frameworks that run jobs as plain functions).

    One atomic script call: ``INCR`` the counter and stamp the first and the N-th completion.
    """
    global _sync_counter
    pid = os.getpid()
    if _sync_counter is None or _sync_counter[0] != pid:
        _sync_counter = (pid, redis.Redis.from_url(redis_url()).register_script(COUNT_LUA))
    _sync_counter[1](keys=_count_keys(), args=[target_n(), repr(time.time())])


async def count_async() -> None:
    """Count one completed job (for frameworks that run coroutine jobs); see :func:`count_sync`."""
    key = (os.getpid(), id(asyncio.get_running_loop()))
    counter = _async_counters.get(key)
    if counter is None:
        counter = aioredis.Redis.from_url(redis_url()).register_script(COUNT_LUA)
        _async_counters[key] = counter
    await counter(keys=_count_keys(), args=[target_n(), repr(time.time())])


def script(name: str) -> str:
    """Path of a console script installed next to the running interpreter (the peer's venv)."""
    return str(Path(sys.executable).parent / name)


async def run_bounded(make: Callable[[], Awaitable[object]], n: int, concurrency: int) -> None:
    """Await ``make()`` ``n`` times with at most ``concurrency`` calls in flight."""
    remaining = n

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await make()

    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))


@dataclasses.dataclass(frozen=True)
class EnqueueSpec:
    """What an adapter must enqueue: ``n`` jobs of ``task`` (``noop`` or ``burn``) with ``args``."""

    n: int
    task: str
    args: tuple[int, ...]
    variant: str

    @property
    def bulk(self) -> bool:
        """True when the adapter should use its fastest enqueue (bulk or concurrent)."""
        return self.variant != "defaults"


@dataclasses.dataclass(frozen=True)
class Enqueued:
    """How an adapter enqueued, and how long the enqueue itself took (client set-up excluded)."""

    mode: str
    seconds: float


class Adapter(Protocol):
    """The module-level interface each ``<name>_bench.py`` provides."""

    DIST: str
    VARIANTS: tuple[str, ...]

    def describe(self, variant: str, workload: str) -> str: ...

    def enqueue(self, spec: EnqueueSpec) -> Enqueued | Awaitable[Enqueued]: ...

    def worker_commands(self, processes: int, variant: str, workload: str) -> list[list[str]]: ...


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, all its descendants, and its process group (best effort)."""
    children = _proc_children()
    victims = [pid]
    index = 0
    while index < len(victims):
        victims.extend(children.get(victims[index], []))
        index += 1
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def error_line(text: str) -> str:
    """The most telling single line of an error output (the exception line of a traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Exit", "Interrupt")) and " " not in head:
            return line[:300]
    return lines[-1][:300] if lines else ""


async def _wait(value: Awaitable[Enqueued]) -> Enqueued:
    return await value


def _run_maybe_async(value: Enqueued | Awaitable[Enqueued]) -> Enqueued:
    if isinstance(value, Enqueued):
        return value
    return asyncio.run(_wait(value))


@dataclasses.dataclass
class _Worker:
    cmd: list[str]
    proc: subprocess.Popen[bytes]
    stderr_path: Path


def _start_workers(cmds: Sequence[list[str]], env: dict[str, str], logdir: Path) -> list[_Worker]:
    workers: list[_Worker] = []
    for index, cmd in enumerate(cmds):
        stderr_path = logdir / f"worker-{index}.log"
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=str(BENCH_DIR),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        workers.append(_Worker(cmd, proc, stderr_path))
    return workers


def _stop_workers(workers: Sequence[_Worker]) -> None:
    for worker in workers:
        kill_tree(worker.proc.pid)
    for worker in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(10)


def _float(value: bytes | None) -> float | None:
    return float(value) if value is not None else None


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    """Run one cell and return its result record (never raises)."""
    result: dict[str, Any] = {
        "adapter": args.adapter,
        "variant": args.variant,
        "workload": args.workload,
        "processes": args.processes,
        "n": args.n,
        "status": "failed",
    }
    try:
        adapter = cast(Adapter, importlib.import_module(args.adapter))
        result["version"] = importlib.metadata.version(adapter.DIST)
        result["settings"] = adapter.describe(args.variant, args.workload)
    except Exception as exc:
        result["error"] = error_line(traceback.format_exc()) or repr(exc)
        return result
    client = redis.Redis.from_url(redis_url())
    client.flushall()
    try:
        if args.workload == "enqueue":
            spec = EnqueueSpec(args.n, "noop", (), args.variant)
            done = _run_maybe_async(adapter.enqueue(spec))
            result.update(
                status="ok",
                enqueue_mode=done.mode,
                seconds=done.seconds,
                rate=args.n / done.seconds if done.seconds > 0 else None,
            )
            return result
        task, task_args = ("burn", (args.iterations,)) if args.workload == "cpu" else ("noop", ())
        pre = _run_maybe_async(adapter.enqueue(EnqueueSpec(args.n, task, task_args, "best")))
        result["pre_enqueue_s"] = pre.seconds
        return _process(adapter, args, client, result)
    except Exception:
        result["error"] = error_line(traceback.format_exc())
        return result
    finally:
        with contextlib.suppress(Exception):
            client.flushall()
        client.close()


def _process(
    adapter: Adapter, args: argparse.Namespace, client: redis.Redis, result: dict[str, Any]
) -> dict[str, Any]:
    key = counter_key()
    if client.get(key) is not None:
        result["error"] = "counter already moved before workers started"
        return result
    cmds = adapter.worker_commands(args.processes, args.variant, args.workload)
    result["worker_commands"] = [" ".join([Path(cmd[0]).name, *cmd[1:]]) for cmd in cmds]
    env = dict(os.environ)
    env.update(BENCH_N=str(args.n), BENCH_VARIANT=args.variant, BENCH_WORKLOAD=args.workload)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    with tempfile.TemporaryDirectory(prefix="aioq-peer-") as tmp:
        started = time.time()
        deadline = time.monotonic() + args.timeout
        workers = _start_workers(cmds, env, Path(tmp))
        done = 0
        failure: str | None = None
        try:
            while time.monotonic() < deadline:
                done = int(client.get(key) or 0)
                if done >= args.n:
                    break
                exited = [w for w in workers if w.proc.poll() is not None]
                if exited:
                    time.sleep(0.5)
                    done = int(client.get(key) or 0)
                    if done >= args.n:
                        break
                    worker = exited[0]
                    text = worker.stderr_path.read_text(errors="replace")
                    failure = (
                        f"worker exited with code {worker.proc.returncode} at {done}/{args.n}: "
                        f"{error_line(text) or '(no output)'}"
                    )
                    break
                time.sleep(POLL_INTERVAL_S)
        finally:
            _stop_workers(workers)
        tail = "\n".join(w.stderr_path.read_text(errors="replace")[-2000:] for w in workers)
    first = _float(cast(bytes | None, client.get(f"{key}:first")))
    last = _float(cast(bytes | None, client.get(f"{key}:last")))
    final = int(client.get(key) or 0)
    result.update(completed=final, duplicates=max(0, final - args.n))
    if first is not None:
        result["startup_s"] = first - started
    if done >= args.n and first is not None and last is not None:
        span = last - first
        result.update(
            status="ok",
            seconds=span,
            rate=(args.n - 1) / span if span > 0 else None,
            rate_from_start=args.n / (last - started) if last > started else None,
        )
        return result
    if failure is not None:
        result["error"] = failure
        return result
    if done >= args.n:
        result["error"] = f"counter reached {done}/{args.n} but a completion stamp is missing"
        return result
    elapsed = time.time() - (first if first is not None else started)
    result.update(status="timeout", error=f"timed out after {args.timeout:g}s at {done}/{args.n}")
    if first is not None and done > 1 and elapsed > 0:
        result["partial_rate"] = (done - 1) / elapsed
    if done == 0:
        hint = error_line(tail)
        if hint:
            result["error"] += f"; worker said: {hint}"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the cell runner; prints one JSON line and exits 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--variant", default="best")
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--iterations", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    os.environ["BENCH_VARIANT"] = args.variant
    os.environ["BENCH_WORKLOAD"] = args.workload
    os.environ["BENCH_N"] = str(args.n)
    print(json.dumps(run_cell(args)), flush=True)
    return 0


if __name__ == "__main__":
    # Run the copy importable as ``common`` so adapters and runner share the same classes.
    sys.exit(importlib.import_module("common").main())
