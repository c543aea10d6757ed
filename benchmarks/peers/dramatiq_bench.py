"""Dramatiq adapter for the peers benchmark (Redis broker).

Dramatiq is synchronous: actors are plain functions run by worker threads inside
``dramatiq --processes P`` processes. ``best`` uses one thread per process for CPU-bound jobs
(the GIL makes more threads useless) and the default 8 for no-ops; ``defaults`` keeps 8 threads
everywhere. Dramatiq has neither an asyncio nor a bulk enqueue API: ``send()`` per message.
"""

from __future__ import annotations

import time

import common
import dramatiq
from dramatiq.brokers.redis import RedisBroker

DIST = "dramatiq"
VARIANTS = ("best", "defaults")

broker = RedisBroker(url=common.redis_url())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop() -> None:
    """A job that does nothing but count itself."""
    common.count_sync()


@dramatiq.actor(queue_name="bench")
def burn(iterations: int) -> int:
    """The calibrated CPU-bound job."""
    result = common.burn_loop(iterations)
    common.count_sync()
    return result


def _threads(variant: str, workload: str) -> int:
    return 1 if variant != "defaults" and workload == "cpu" else 8


def describe(variant: str, workload: str) -> str:
    """Settings used for this row."""
    if variant == "defaults":
        return "defaults: --threads 8; dramatiq --processes P"
    return f"--threads {_threads(variant, workload)}; dramatiq --processes P"


def enqueue(spec: common.EnqueueSpec) -> common.Enqueued:
    """Enqueue ``spec.n`` messages with ``send()`` (the only enqueue API)."""
    actor = burn if spec.task == "burn" else noop
    broker.client.ping()
    start = time.perf_counter()
    for _ in range(spec.n):
        actor.send(*spec.args)
    return common.Enqueued("sequential send() (sync API, no bulk)", time.perf_counter() - start)


def worker_commands(processes: int, variant: str, workload: str) -> list[list[str]]:
    """One ``dramatiq`` command with ``--processes processes``."""
    return [
        [
            common.script("dramatiq"),
            "dramatiq_bench",
            "--processes",
            str(processes),
            "--threads",
            str(_threads(variant, workload)),
        ]
    ]
