"""``aioqueue-worker MODULE:ATTR``: parse arguments, configure logging and the loop, run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from ._imports import import_queue
from .worker import Worker, WorkerSettings

__all__ = ("main",)

_D = WorkerSettings(processes=1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aioqueue-worker",
        description="Run an aioqueue worker: one supervisor process and a pool of children.",
    )
    p.add_argument("queue", metavar="MODULE:ATTR", help="the Queue to serve, e.g. tasks:queue")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="child processes running tasks (default: CPU count)")  # fmt: skip
    p.add_argument("--redis-url", help="overrides the queue's URL and $AIOQUEUE_REDIS_URL")
    p.add_argument("--burst", action="store_true",
                   help="exit once the queue is empty and nothing is in flight")  # fmt: skip
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])  # fmt: skip
    p.add_argument("--grace", type=float, default=_D.grace,
                   help="seconds jobs may finish after SIGTERM (default %(default)s)")  # fmt: skip
    p.add_argument("--max-tasks-per-child", type=int, default=None,
                   help="replace a child after this many jobs")  # fmt: skip
    p.add_argument("--prefetch", type=int, default=_D.prefetch,
                   help="jobs claimed beyond the free children (default %(default)s)")  # fmt: skip
    p.add_argument("--heartbeat", type=float, default=_D.heartbeat,
                   help="seconds between heartbeats")  # fmt: skip
    p.add_argument("--lease", type=float, default=_D.lease,
                   help="seconds a job's lease lasts without a heartbeat")  # fmt: skip
    p.add_argument("--maintenance-interval", type=float, default=_D.maintenance_interval,
                   help="seconds between recoveries of expired leases")  # fmt: skip
    p.add_argument("--block-timeout", type=float, default=_D.block_timeout,
                   help="longest blocking wait on Redis")  # fmt: skip
    p.add_argument("--retry-backoff", type=float, default=_D.retry_backoff,
                   help="first retry delay (s); doubles per attempt, jittered")  # fmt: skip
    p.add_argument("--kill-grace", type=float, default=_D.kill_grace,
                   help="seconds between TERM and KILL of a timed-out child")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``aioqueue-worker``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        queue = import_queue(args.queue)
        if args.redis_url:
            queue.redis_url = args.redis_url
        settings = WorkerSettings(
            processes=args.processes,
            prefetch=args.prefetch,
            burst=args.burst,
            heartbeat=args.heartbeat,
            lease=args.lease,
            maintenance_interval=args.maintenance_interval,
            block_timeout=args.block_timeout,
            grace=args.grace,
            max_tasks_per_child=args.max_tasks_per_child,
            retry_backoff=args.retry_backoff,
            kill_grace=args.kill_grace,
        )
        worker = Worker(queue, args.queue, settings)
    except (ValueError, ImportError, AttributeError) as exc:
        sys.exit(f"aioqueue-worker: {exc}")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional where it doesn't install
        asyncio.run(worker.run())
    else:
        uvloop.run(worker.run())
