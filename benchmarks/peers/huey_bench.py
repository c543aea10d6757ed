"""Huey adapter for the peers benchmark (``RedisHuey``).

Huey is synchronous: tasks are plain functions. ``huey_consumer -k process -w P`` runs ``P``
worker processes (the default is a single thread, which is not a process comparison, so the
process flags are always given). Huey's Redis storage dequeues with a blocking pop by default, so
its polling settings do not apply; ``defaults`` logs at Huey's default INFO (two lines per task),
``best`` passes ``-q`` (errors only). Enqueue calls the task once per job (no asyncio or bulk
API).
"""

from __future__ import annotations

import time

import common
from huey import RedisHuey

DIST = "huey"
VARIANTS = ("best", "defaults")

huey = RedisHuey("bench", url=common.redis_url())


@huey.task()
def noop() -> None:
    """A job that does nothing but count itself."""
    common.count_sync()


@huey.task()
def burn(iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    common.count_sync()
    return result


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults + -k process -w P; INFO log; blocking BRPOP dequeue"
    return "-k process -w P -q; blocking BRPOP dequeue"


def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` tasks by calling the task (the only enqueue API)."""
    task = burn if spec.task == "burn" else noop
    huey.storage.conn.ping()
    start = time.perf_counter()
    for _ in range(spec.n):
        task(*spec.args)
    return common.Enqueued(
        "sequential task() calls (sync API, no bulk)", time.perf_counter() - start
    )


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """One ``huey_consumer`` with ``processes`` worker processes."""
    cmd = [common.script("huey_consumer"), "huey_bench.huey", "-k", "process", "-w", str(processes)]
    return [cmd if variant == "defaults" else [*cmd, "-q"]]
