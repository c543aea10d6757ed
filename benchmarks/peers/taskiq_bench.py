"""taskiq adapter for the peers benchmark (``taskiq-redis``'s ``RedisStreamBroker``).

taskiq runs coroutine jobs on an event loop in each of ``taskiq worker --workers P`` child
processes. The CPU job runs inline in the coroutine. ``best`` skips argument parsing
(``--no-parse``), logs at WARNING, and sizes ``--max-async-tasks`` for the workload; ``defaults``
keeps taskiq's settings (100 async tasks, INFO logging). The broker's consumer group is created
by the producer before enqueueing, so jobs enqueued before the workers start are delivered.
"""

from __future__ import annotations

import common
from taskiq_redis import RedisStreamBroker

DIST = "taskiq"
VARIANTS = ("best", "defaults")

broker = RedisStreamBroker(url=common.redis_url(), queue_name="bench")


@broker.task
async def noop() -> None:
    """A job that does nothing but count itself."""
    await common.count_async()


@broker.task
async def burn(iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    await common.count_async()
    return result


def _max_async(workload: str) -> int:
    return 1 if workload == "cpu" else 100


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults: --max-async-tasks 100, INFO log; taskiq worker --workers P"
    return (
        f"--max-async-tasks {_max_async(workload)} --no-parse --log-level WARNING; "
        "taskiq worker --workers P"
    )


async def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` jobs with ``kiq``: 64 concurrent coroutines, or one by one."""
    task = burn if spec.task == "burn" else noop
    await broker.startup()
    try:
        return await common.enqueue_each(spec, lambda: task.kiq(*spec.args), "kiq")
    finally:
        await broker.shutdown()


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """One ``taskiq worker`` command with ``--workers processes``."""
    cmd = [common.script("taskiq"), "worker", "taskiq_bench:broker", "--workers", str(processes)]
    if variant != "defaults":
        cmd += ["--max-async-tasks", str(_max_async(workload)), "--no-parse"]
        cmd += ["--log-level", "WARNING"]
    return [cmd]
