"""aioqueue's side of the benchmarks: the tasks, a queue to submit them, and workers to run them.

The queue's name comes from ``$AIOQUEUE_BENCH_QUEUE`` (default ``bench``), so every benchmark
run can use a fresh queue (fresh counters, no worker left registered by an earlier run) while the
worker, which imports this module as ``bench_tasks:queue``, serves the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import _common

from aioqueue import Queue

QUEUE_ENV = "AIOQUEUE_BENCH_QUEUE"

queue = Queue(os.environ.get(QUEUE_ENV, "bench"))


@queue.task
def noop() -> None:
    """Do nothing: what is left of a job's cost is the queue's own."""
    return None


@queue.task
def burn(iterations: int) -> int:
    """The calibrated CPU-bound job (:func:`_common.burn_loop`)."""
    return _common.burn_loop(iterations)


@queue.task
async def io_wait(seconds: float) -> None:
    """Wait ``seconds`` on the child's event loop, as an I/O-bound task waits on the network."""
    await asyncio.sleep(seconds)


def make_queue(name: str, redis_url: str) -> Queue:
    """A producer-side queue named ``name`` with these tasks registered under their usual names."""
    producer = Queue(name, redis_url=redis_url)
    producer.task(noop)
    producer.task(burn)
    producer.task(io_wait)
    return producer


@contextlib.asynccontextmanager
async def fresh_queue(target: _common.RedisTarget, prefix: str) -> AsyncIterator[Queue]:
    """An open queue of a name not used before; its keys are deleted after, unless the Redis is
    the benchmark's own (thrown away with everything in it)."""
    async with make_queue(_common.fresh_queue_name(prefix), target.url) as producer:
        try:
            yield producer
        finally:
            if not target.private:
                match = f"aioqueue:{{{producer.name}}}:*"
                keys = [key async for key in producer.redis.scan_iter(match=match)]
                for i in range(0, len(keys), 1000):
                    await producer.redis.delete(*keys[i : i + 1000])


def worker(
    producer: Queue, processes: int, log_path: Path, extra_args: Sequence[str] = ()
) -> _common.Worker:
    """``python -m aioqueue bench_tasks:queue`` serving ``producer``'s queue (not started yet:
    use it as a context manager, or call ``start()`` and ``stop()``)."""
    env = dict(os.environ)
    env[QUEUE_ENV] = producer.name
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(_common.BENCH_DIR), env.get("PYTHONPATH")])
    )
    command = [
        sys.executable, "-m", "aioqueue", "bench_tasks:queue", "--processes", str(processes),
        "--redis-url", producer.redis_url, "--log-level", "warning", *extra_args,
    ]  # fmt: skip
    return _common.Worker(command, log_path, env=env)
