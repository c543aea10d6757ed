"""aioqueue adapter for the peers benchmark (runs in the project's own environment).

Jobs are plain functions executed by the worker's child-process pool; enqueue uses ``submit_many``
(one bulk call) or, for the sequential figure, one awaited ``submit`` per job.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import common

from aioqueue import Queue

DIST = "aioqueue"
VARIANTS = ("best", "defaults")

queue = Queue("bench", redis_url=common.redis_url())


@queue.task
def noop() -> None:
    """A job that does nothing but count itself."""
    common.count_sync()


@queue.task
def burn(iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    common.count_sync()
    return result


def describe(variant: str, workload: str) -> str:
    """Settings used for this row: prefetch adapts to the tasks' run time either way; ``best``
    logs warnings only (no line per completed job)."""
    del workload
    if variant == "defaults":
        return "defaults: --processes P --burst; INFO log (a line per job); adaptive prefetch"
    return "--processes P --burst --log-level warning; adaptive prefetch"


async def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` jobs; the timing excludes opening the connection."""
    fn = burn if spec.task == "burn" else noop
    async with queue:
        start = time.perf_counter()
        if spec.bulk:
            await queue.submit_many(fn, [spec.args for _ in range(spec.n)])
            mode = "submit_many (one bulk call)"
        else:
            for _ in range(spec.n):
                await queue.submit(fn, *spec.args)
            mode = "sequential await submit()"
        return common.Enqueued(mode, time.perf_counter() - start)


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """One supervisor with ``processes`` child processes."""
    script = Path(sys.executable).with_name("aioqueue-worker")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "aioqueue"]
    cmd = [*head, "aioqueue_bench:queue", "--processes", str(processes)]
    cmd += ["--redis-url", common.redis_url(), "--burst"]
    if variant != "defaults":
        cmd += ["--log-level", "warning"]
    return [cmd]
