"""Tasks for the pool tests (tests/test_pool.py), run in the pool's children; no Redis needed.

If ``AIOQUEUE_POOL_TASKS_BROKEN`` names a file that exists, importing this module fails, as a
deploy that broke a task module would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from aioqueue import Queue

_flag = os.environ.get("AIOQUEUE_POOL_TASKS_BROKEN")
if _flag and Path(_flag).exists():
    raise RuntimeError("pool_tasks is broken on purpose")

queue = Queue("pool-tests")


@queue.task
def add(a: int, b: int) -> int:
    print("adding", a, b)  # goes to stderr, never into the reply pipe
    return a + b


@queue.task
def fail(message: str) -> None:
    raise ValueError(message)


@queue.task
def crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@queue.task
def pid() -> int:
    return os.getpid()


@queue.task
def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@queue.task
def touch(path: str) -> None:
    Path(path).touch()


@queue.task
def wait_for(path: str, limit: float = 30.0) -> int:
    """Hold the child until the file ``path`` exists (a test's go signal), at most ``limit`` s."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


@queue.task
async def loop_id() -> int:
    await asyncio.sleep(0)
    return id(asyncio.get_running_loop())


@queue.task
async def async_fail() -> None:
    await asyncio.sleep(0)
    raise KeyError("async")


@queue.task
def exit_now(code: int) -> None:
    sys.stdout.flush()
    os._exit(code)


@queue.task
async def nap(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()
