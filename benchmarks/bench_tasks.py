"""Tasks for the benchmarks, imported by the benchmark scripts and by the workers they start.

The queue's name comes from ``$AIOQUEUE_BENCH_QUEUE`` (default ``bench``), so every benchmark
run can use a fresh queue (fresh counters, no worker left registered by an earlier run) while the
worker, which imports this module as ``bench_tasks:queue``, serves the same one.
"""

from __future__ import annotations

import os

from aioqueue import Queue

QUEUE_ENV = "AIOQUEUE_BENCH_QUEUE"

queue = Queue(os.environ.get(QUEUE_ENV, "bench"))


@queue.task
def noop() -> None:
    """Do nothing: what is left of a job's cost is the queue's own."""
    return None


@queue.task
def burn(iterations: int) -> int:
    """Pure-Python integer arithmetic: ``iterations`` rounds, no I/O, no allocation to speak of."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) % 1_000_003
    return acc
