"""SAQ adapter for the peers benchmark.

SAQ runs coroutine jobs on an event loop per worker process; ``saq --workers P`` starts ``P``
processes. The CPU job runs inline in the coroutine. ``best`` sizes ``concurrency`` for the
workload and passes ``--quiet`` (no per-job INFO log line); ``defaults`` keeps ``concurrency=10``
and the default logging.
"""

from __future__ import annotations

from typing import Any

import common
from saq import Queue

DIST = "saq"
VARIANTS = ("best", "defaults")

queue = Queue.from_url(common.redis_url(), name="bench")


async def noop(ctx: dict[str, Any]) -> None:
    """A job that does nothing but count itself."""
    await common.count_async()


async def burn(ctx: dict[str, Any], *, iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    await common.count_async()
    return result


def _concurrency(variant: str, workload: str) -> int:
    if variant == "defaults":
        return 10
    return 1 if workload == "cpu" else 50


settings: dict[str, Any] = {
    "queue": queue,
    "functions": [noop, burn],
    "concurrency": _concurrency(common.variant(), common.workload()),
}


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults: concurrency=10; saq --workers P"
    return f"concurrency={_concurrency(variant, workload)}, --quiet; saq --workers P"


async def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` jobs with ``Queue.enqueue``: 64 concurrent coroutines, or one by one."""
    kwargs = {"iterations": spec.args[0]} if spec.task == "burn" else {}
    await queue.connect()
    try:
        return await common.enqueue_each(
            spec, lambda: queue.enqueue(spec.task, **kwargs), "enqueue"
        )
    finally:
        await queue.disconnect()


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """One ``saq`` command with ``--workers processes``."""
    cmd = [common.script("saq"), "saq_bench.settings", "--workers", str(processes)]
    if variant != "defaults":
        cmd.append("--quiet")
    return [cmd]
