"""Shared runtime for the peers benchmark: the CPU job, completion counting, and the cell runner.

This module is imported by every ``<name>_bench.py`` adapter, inside that peer's own virtualenv and
inside its worker processes, so it depends only on the standard library, ``redis`` (redis-py) and
the benchmarks' shared module ``benchmarks/_common.py`` (standard library only).

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
sys.path.insert(0, str(BENCH_DIR.parent))  # the benchmarks' shared module, standard library only

import _common  # noqa: E402
from _common import burn_loop  # noqa: E402, F401 - the adapters' CPU job

COUNTER_DEFAULT = "bench:done"
POLL_S = 0.005
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


async def enqueue_each(
    spec: EnqueueSpec, make: Callable[[], Awaitable[object]], call: str
) -> Enqueued:
    """Enqueue ``spec.n`` jobs with ``make()`` (the framework's ``call``), timed: from 64
    concurrent coroutines for the best figure, else one awaited call at a time."""
    start = time.perf_counter()
    if spec.bulk:
        await _common.in_lanes(make, spec.n, 64)
        mode = f"{call} x 64 concurrent coroutines (no bulk API)"
    else:
        for _ in range(spec.n):
            await make()
        mode = f"sequential await {call}()"
    return Enqueued(mode, time.perf_counter() - start)


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

    def count() -> int:
        return int(client.get(key) or 0)

    async def reach_n(within: float, check: Callable[[], None] | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await _common.wait_until(
                lambda: count() >= args.n, within, "completions", interval=POLL_S, check=check
            )
        return count() >= args.n

    with tempfile.TemporaryDirectory(prefix="aioq-peer-") as tmp:
        started = time.time()
        meter = _common.CpuMeter().start()
        workers = [
            _common.Worker(cmd, Path(tmp) / f"worker-{i}.log", env=env, cwd=BENCH_DIR).start()
            for i, cmd in enumerate(cmds)
        ]

        def check() -> None:
            for worker in workers:
                worker.check_alive()

        failure: str | None = None
        try:
            asyncio.run(reach_n(args.timeout, check))
        except RuntimeError:  # a worker exited: a burst worker may do so as it finishes
            if not asyncio.run(reach_n(0.5)):
                gone = next(w for w in workers if w.exited is not None)
                failure = (
                    f"worker exited with code {gone.exited} at "
                    f"{count()}/{args.n}: {error_line(gone.log_tail()) or '(no output)'}"
                )
        finally:
            result["load"] = meter.stop()
            for worker in workers:
                worker.stop(grace=0)
        done = count()
        tail = "\n".join(w.log_tail() for w in workers)
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
