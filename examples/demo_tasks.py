"""Demo tasks for the Flask dispatcher: ``burn`` keeps a CPU busy, then fails at a given rate.

Imported by the app and by the worker; from the repository root::

    aioqueue-worker examples.demo_tasks:queue --processes 4
"""

from __future__ import annotations

import os
import random
import time

from aioqueue import Queue

queue = Queue("demo")  # redis_url from $AIOQUEUE_REDIS_URL, as for the worker


@queue.task(name="demo.burn", retries=0)
def burn(work_ms: float = 10.0, fail_rate: float = 0.0) -> dict[str, int]:
    """Spin the CPU for ``work_ms`` milliseconds, then raise with probability ``fail_rate``
    (no retries, so that the failures seen are the rate asked for).

    :return: the spins done and the pid of the child process that ran them.
    """
    deadline = time.perf_counter() + work_ms / 1000
    spins = 0
    while time.perf_counter() < deadline:
        spins += 1
    if random.random() < fail_rate:
        raise RuntimeError(f"failed on purpose (fail_rate={fail_rate})")
    return {"spins": spins, "pid": os.getpid()}
