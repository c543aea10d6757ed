"""arq adapter for the peers benchmark.

arq runs coroutine jobs on one event loop per worker process and has no process pool of its own,
so ``P`` worker processes are ``P`` separate ``arq`` commands. The CPU job runs inline in the
coroutine (arq's model for CPU work without an executor). ``best`` lowers ``poll_delay`` (default
0.5 s) and sizes ``max_jobs`` for the workload; ``defaults`` keeps arq's settings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import common
from arq import create_pool
from arq.connections import RedisSettings

DIST = "arq"
VARIANTS = ("best", "defaults")

BEST_POLL_DELAY = 0.01


async def noop(ctx: dict[str, Any]) -> None:
    """A job that does nothing but count itself."""
    await common.count_async()


async def burn(ctx: dict[str, Any], iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    await common.count_async()
    return result


def _max_jobs(variant: str, workload: str) -> int:
    if variant == "defaults":
        return 10
    return 1 if workload == "cpu" else 100


def _poll_delay(variant: str) -> float:
    return 0.5 if variant == "defaults" else BEST_POLL_DELAY


class WorkerSettings:
    """Worker settings read by the ``arq`` CLI; tuned from the cell's variant and workload."""

    functions: ClassVar[list[Any]] = [noop, burn]
    redis_settings = RedisSettings.from_dsn(common.redis_url())
    poll_delay = _poll_delay(common.variant())
    max_jobs = _max_jobs(common.variant(), common.workload())


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults: poll_delay=0.5, max_jobs=10; P x `arq` processes"
    return (
        f"poll_delay={BEST_POLL_DELAY}, max_jobs={_max_jobs(variant, workload)}; "
        "P x `arq` processes"
    )


async def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` jobs with ``enqueue_job``: 64 concurrent coroutines, or one by one."""
    pool = await create_pool(RedisSettings.from_dsn(common.redis_url()))
    try:
        await pool.ping()
        return await common.enqueue_each(
            spec, lambda: pool.enqueue_job(spec.task, *spec.args), "enqueue_job"
        )
    finally:
        await pool.aclose()


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """``processes`` independent ``arq`` worker processes."""
    return [[common.script("arq"), "arq_bench.WorkerSettings"] for _ in range(processes)]
