"""Tasks for the chaos suite; every attempt is written to a ledger kept outside Redis.

The ledger is a directory (``$AIOQUEUE_CHAOS_LEDGER``) with one file per process. Each line is
``start|end TAG PID UNIX_TIME`` and is written with a single ``write`` on an ``O_APPEND`` file, so
a process killed mid-line leaves at most one line without its newline, which readers ignore.

Tasks don't learn their job id, so every job gets a unique tag as its first argument and the
producer keeps the tag -> job id map. The queue's name comes from ``$AIOQUEUE_CHAOS_QUEUE``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

from aioqueue import Queue

QUEUE_ENV = "AIOQUEUE_CHAOS_QUEUE"
LEDGER_ENV = "AIOQUEUE_CHAOS_LEDGER"

queue = Queue(os.environ.get(QUEUE_ENV, "chaos"))

WORK = f"{__name__}.work"
FLAKY = f"{__name__}.flaky"
SUICIDE = f"{__name__}.suicide"
SEGFAULT = f"{__name__}.segfault"
EXIT_HARD = f"{__name__}.exit_hard"
KILL_SUPERVISOR = f"{__name__}.kill_supervisor"
WORK_ONCE = f"{__name__}.work_once"
FAIL_FIRST = f"{__name__}.fail_first"


def note(event: str, tag: str) -> None:
    """Append one ledger line for this process (no-op without a ledger directory)."""
    directory = os.environ.get(LEDGER_ENV)
    if not directory:
        return
    line = f"{event} {tag} {os.getpid()} {time.time():.6f}\n".encode()
    path = os.path.join(directory, f"{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def starts_of(tag: str) -> int:
    """How many ``start`` lines the ledger holds for ``tag`` (over every process)."""
    directory = os.environ.get(LEDGER_ENV)
    if not directory:
        return 0
    needle = f"start {tag} ".encode()
    n = 0
    for path in Path(directory).glob("*.log"):
        for line in path.read_bytes().split(b"\n")[:-1]:
            if line.startswith(needle):
                n += 1
    return n


def _spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


@queue.task
def work(
    tag: str, cost: float = 0.0, spin: int = 0, once: bool = False, pad: str = ""
) -> list[object]:
    """Sleep ``cost`` seconds (only on the first start of ``tag`` if ``once``) and burn ``spin``
    iterations of CPU; return ``[tag, pid]``. ``pad`` only makes the job bigger."""
    note("start", tag)
    if cost and not (once and starts_of(tag) > 1):
        time.sleep(cost)
    if spin:
        _spin(spin)
    note("end", tag)
    return [tag, os.getpid()]


@queue.task(retries=0)
def work_once(tag: str, cost: float = 0.0) -> list[object]:
    """:func:`work` with no retry: a lost attempt dead-letters the job at once."""
    note("start", tag)
    if cost:
        time.sleep(cost)
    note("end", tag)
    return [tag, os.getpid()]


@queue.task(retries=0)
def fail_first(tag: str) -> list[object]:
    """Raise on the first start of ``tag`` (no retry: dead-lettered), succeed once requeued."""
    note("start", tag)
    n = starts_of(tag)
    note("end", tag)
    if n <= 1:
        raise RuntimeError(f"{tag}: the first start fails on purpose")
    return [tag, n]


@queue.task(retries=2)
def flaky(tag: str, failures: int) -> list[object]:
    """Fail while this tag has started at most ``failures`` times; return ``[tag, starts]``."""
    note("start", tag)
    n = starts_of(tag)
    if n <= failures:
        note("end", tag)
        raise RuntimeError(f"{tag}: start {n} fails on purpose")
    note("end", tag)
    return [tag, n]


@queue.task(retries=2)
def suicide(tag: str) -> None:
    """SIGKILL the child running it, every time."""
    note("start", tag)
    os.kill(os.getpid(), signal.SIGKILL)


@queue.task(retries=2)
def segfault(tag: str) -> None:
    """Crash the child running it with SIGSEGV, every time."""
    note("start", tag)
    ctypes.string_at(0)


@queue.task(retries=2)
def exit_hard(tag: str) -> None:
    """End the child running it with exit code 3, every time."""
    note("start", tag)
    os._exit(3)


@queue.task(retries=1)
def kill_supervisor(tag: str) -> None:
    """SIGKILL the supervisor of the child running it, every time."""
    note("start", tag)
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(10)
