"""RQ adapter for the peers benchmark.

RQ is synchronous: jobs are plain functions and ``P`` worker processes are ``P`` separate
``rq worker`` commands. ``best`` uses ``SimpleWorker`` (runs jobs in the worker process instead of
forking a work horse per job), ``--quiet`` logging, and enqueues with ``enqueue_many`` (one
pipeline); ``defaults`` uses the forking ``Worker``, RQ's INFO log and one ``enqueue`` call per
job. RQ has no asyncio client.
"""

from __future__ import annotations

import time

import common
from redis import Redis
from rq import Queue

DIST = "rq"
VARIANTS = ("best", "defaults")


def noop() -> None:
    """A job that does nothing but count itself."""
    common.count_sync()


def burn(iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    common.count_sync()
    return result


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults: forking Worker; P x `rq worker`"
    return "--worker-class rq.worker.SimpleWorker --quiet; P x `rq worker`"


def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` jobs: ``enqueue_many`` in one pipeline, or one ``enqueue`` per job."""
    fn = burn if spec.task == "burn" else noop
    connection = Redis.from_url(common.redis_url())
    queue = Queue("bench", connection=connection)
    try:
        connection.ping()
        start = time.perf_counter()
        if spec.bulk:
            queue.enqueue_many([Queue.prepare_data(fn, spec.args) for _ in range(spec.n)])
            mode = "enqueue_many (one pipeline; sync API)"
        else:
            for _ in range(spec.n):
                queue.enqueue(fn, *spec.args)
            mode = "sequential enqueue() (sync API)"
        return common.Enqueued(mode, time.perf_counter() - start)
    finally:
        connection.close()


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """``processes`` independent ``rq worker`` processes."""
    cmd = [common.script("rq"), "worker", "bench", "--url", common.redis_url()]
    if variant != "defaults":
        cmd += ["--quiet", "--worker-class", "rq.worker.SimpleWorker"]
    return [list(cmd) for _ in range(processes)]
