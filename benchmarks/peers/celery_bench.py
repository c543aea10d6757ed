"""Celery adapter for the peers benchmark (Redis broker, no result backend).

Celery is synchronous: tasks are plain functions run by a prefork pool of ``--concurrency P``
child processes. ``best`` follows Celery's optimisation guide for the workload (prefetch
multiplier 16 for short tasks, 1 with ``-O fair`` for long ones) and starts without gossip,
mingle and heartbeat; ``defaults`` keeps prefetch multiplier 4. Enqueue reuses one producer
(``best``) or calls ``delay()`` per task; Celery has no asyncio enqueue API.
"""

from __future__ import annotations

import time

import common
from celery import Celery

DIST = "celery"
VARIANTS = ("best", "defaults")

app = Celery("celery_bench", broker=common.redis_url())
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue="bench")


@app.task
def noop() -> None:
    """A job that does nothing but count itself."""
    common.count_sync()


@app.task
def burn(iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    common.count_sync()
    return result


def _best_flags(workload: str) -> list[str]:
    flags = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if workload == "cpu":
        return [*flags, "--prefetch-multiplier", "1", "-O", "fair"]
    return [*flags, "--prefetch-multiplier", "16"]


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults: prefork, prefetch-multiplier 4; celery worker -c P"
    return " ".join(_best_flags(workload)) + "; prefork, celery worker -c P"


def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` tasks: ``apply_async`` on one producer, or ``delay()`` per task."""
    task = burn if spec.task == "burn" else noop
    with app.connection_for_write() as connection:
        connection.ensure_connection()
        start = time.perf_counter()
        if spec.bulk:
            with app.producer_or_acquire() as producer:
                for _ in range(spec.n):
                    task.apply_async(spec.args, producer=producer)
            mode = "apply_async on one producer (sync API, no bulk)"
        else:
            for _ in range(spec.n):
                task.delay(*spec.args)
            mode = "sequential delay() (sync API)"
        return common.Enqueued(mode, time.perf_counter() - start)


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """One ``celery worker`` with a prefork pool of ``processes``."""
    cmd = [common.script("celery"), "-A", "celery_bench", "worker", "-Q", "bench"]
    cmd += ["--concurrency", str(processes), "--pool", "prefork", "--loglevel", "WARNING"]
    if variant != "defaults":
        cmd += _best_flags(workload)
    return [cmd]
