"""streaQ adapter for the peers benchmark.

streaQ runs coroutine jobs on an event loop per worker process; ``streaq run --workers P`` starts
``P`` processes. The CPU job runs inline in the coroutine. ``best`` sizes ``concurrency`` (and so
prefetch) for the workload and enqueues with ``enqueue_many`` (one pipeline); ``defaults`` keeps
``concurrency=16`` and awaits each enqueue.
"""

from __future__ import annotations

import time

import common
from streaq import Worker

DIST = "streaq"
VARIANTS = ("best", "defaults")


def _concurrency(variant: str, workload: str) -> int:
    if variant == "defaults":
        return 16
    return 1 if workload == "cpu" else 64


worker = Worker(
    redis_url=common.redis_url(),
    queue_name="bench",
    concurrency=_concurrency(common.variant(), common.workload()),
)


@worker.task()
async def noop() -> None:
    """A job that does nothing but count itself."""
    await common.count_async()


@worker.task()
async def burn(iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    await common.count_async()
    return result


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults: concurrency=16 (prefetch=concurrency); streaq run --workers P"
    return f"concurrency={_concurrency(variant, workload)}; streaq run --workers P"


async def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` jobs: ``enqueue_many`` in one pipeline, or one awaited ``enqueue``."""
    task = burn if spec.task == "burn" else noop
    async with worker:
        start = time.perf_counter()
        if spec.bulk:
            await worker.enqueue_many([task.enqueue(*spec.args) for _ in range(spec.n)])
            mode = "enqueue_many (one pipeline)"
        else:
            for _ in range(spec.n):
                await task.enqueue(*spec.args)
            mode = "sequential await enqueue()"
        return common.Enqueued(mode, time.perf_counter() - start)


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """One ``streaq run`` command with ``--workers processes``."""
    return [[common.script("streaq"), "run", "streaq_bench:worker", "--workers", str(processes)]]
