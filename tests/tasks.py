"""Tasks the test suite runs through real workers (imported by producers and by workers)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from fractions import Fraction
from pathlib import Path

import msgspec

from aioqueue import JobContext, Queue, Snooze, job_context, register_type

# A test breaks this module's import (as a bad deploy would) by creating the file named here.
_BREAK = os.environ.get("AIOQUEUE_TEST_BREAK_IMPORT")
if _BREAK and os.path.exists(_BREAK):
    raise ImportError(f"{__name__}: {Path(_BREAK).read_text()}")

queue = Queue(os.environ.get("AIOQUEUE_TEST_QUEUE", "tests"))


class Point(msgspec.Struct):
    x: int
    y: int


# A type msgpack can't carry, taught to aioqueue (producers, workers and children import this).
register_type(
    Fraction, encode=lambda f: [f.numerator, f.denominator], decode=lambda v: Fraction(*v)
)

# -- child lifecycle (tests/test_lifecycle.py) -------------------------------------------------
# Each child "loads a model" when it starts, and opens something on its event loop. A test makes
# the load fail by creating the file named in AIOQUEUE_TEST_BREAK_START, and has children note
# their stop in the file named in AIOQUEUE_TEST_STOP_LEDGER (where the first stop hook raises).
_model: dict[str, int] = {}


@queue.on_child_start
def _load_model() -> None:
    flag = os.environ.get("AIOQUEUE_TEST_BREAK_START")
    if flag and os.path.exists(flag):
        raise RuntimeError(f"model not loaded: {Path(flag).read_text()}")
    _model["loads"] = _model.get("loads", 0) + 1
    _model["pid"] = os.getpid()


@queue.on_child_start
async def _open_session() -> None:
    _model["loop"] = id(asyncio.get_running_loop())


@queue.on_child_stop
def _note_stop() -> None:
    ledger = os.environ.get("AIOQUEUE_TEST_STOP_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{os.getpid()} sync\n")
        raise RuntimeError("a stop hook that fails")


@queue.on_child_stop
async def _note_stop_on_the_loop() -> None:
    ledger = os.environ.get("AIOQUEUE_TEST_STOP_LEDGER")
    if ledger and _model["loop"] == id(asyncio.get_running_loop()):
        with Path(ledger).open("a") as f:  # noqa: ASYNC230 - a test's one line
            f.write(f"{os.getpid()} async\n")


@queue.task
def model() -> list[int]:
    """What the start hooks left: their runs in this child, the pid they ran in; this pid."""
    return [_model["loads"], _model["pid"], os.getpid()]


@queue.task
async def model_loop() -> bool:
    """Whether this async task runs on the loop the async start hook ran on."""
    await asyncio.sleep(0)
    return _model["loop"] == id(asyncio.get_running_loop())


# -- limits (tests/test_limits.py) -------------------------------------------------------------


@queue.task(retries=0)
def use_cpu(seconds: float) -> int:
    """Use ``seconds`` of this process's CPU time; return the pid."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return os.getpid()


@queue.task(retries=0)
def spin(limit: float) -> str:
    """Spin in Python for ``limit`` s of wall clock, unless stopped."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        pass
    return "not stopped"


@queue.task(retries=0)
async def spin_async(limit: float) -> str:
    """Spin on the child's event loop for ``limit`` s of wall clock, unless stopped."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        pass
    return "not stopped"


_hoard: list[bytes] = []


@queue.task(retries=1)
def hog(mib: int, keep: bool = False, hold: float = 0.0) -> int:
    """Fill ``mib`` MiB (kept after the job if ``keep``), hold it ``hold`` s; return the pid."""
    block = b"\x01" * (mib << 20)
    if keep:
        _hoard.append(block)
    time.sleep(hold)
    return os.getpid()


@queue.task
def add(a: int, b: int) -> int:
    return a + b


@queue.task
def noop() -> None:
    return None


@queue.task(retries=0)
def fail(message: str) -> None:
    raise ValueError(message)


@queue.task(retries=2)
def fail_retried(message: str) -> None:
    raise RuntimeError(message)


@queue.task
def norm(p: Point) -> Point:
    return Point(x=abs(p.x), y=abs(p.y))


@queue.task(retries=0)
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@queue.task(retries=0, timeout=0.5)
def spin_forever() -> None:
    while True:
        pass


@queue.task
def burn(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


@queue.task(retries=0)
def block_until(path: str, limit: float = 30.0) -> bool:
    """Hold a child until the file ``path`` exists (a test's go signal), at most ``limit`` s."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@queue.task(retries=1)
def crash_child() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@queue.task(retries=1)
def segfault() -> None:
    ctypes.string_at(0)


@queue.task(retries=1)
def kill_supervisor() -> None:
    os.kill(os.getppid(), signal.SIGKILL)


@queue.task(retries=0)
def unencodable_result() -> object:
    return object()


@queue.task
def record(ledger: str, tag: str, seconds: float = 0.0) -> str:
    """Append a start line to the ledger (outside Redis), sleep, return the tag."""
    with open(ledger, "a") as f:
        f.write(f"{tag} {os.getpid()}\n")
    if seconds:
        time.sleep(seconds)
    return tag


@queue.task(retries=3)
def flaky(ledger: str, failures: int) -> int:
    """Fail the first ``failures`` attempts (counted in the ledger), then succeed."""
    path = Path(ledger)
    with path.open("a") as f:
        f.write("x\n")
    attempts = len(path.read_text().splitlines())
    if attempts <= failures:
        raise RuntimeError(f"attempt {attempts} fails")
    return attempts


@queue.task
def pid() -> int:
    return os.getpid()


@queue.task
def submit_from_child(a: int, b: int) -> tuple[bool, int]:
    """Whether this child had loaded the Redis client before; then add(a, b) submitted from
    here and awaited (which loads it)."""
    loaded = "redis" in sys.modules
    return loaded, queue.sync.submit(add, a, b).result(timeout=20)


@queue.task
def echo(value):  # type: ignore[no-untyped-def]
    """Unannotated: any msgpack value passes through."""
    return value


@queue.task
async def add_async(a: int, b: int) -> int:
    """An ``async def`` task: its child runs it to completion on an event loop of its own."""
    return a + b


@queue.task
def halve(x: Fraction) -> Fraction:
    """A registered type as argument and result."""
    return x / 2


@queue.task
def union(a: set[int], b: set[int]) -> set[int]:
    """Sets travel as arrays; annotated, they arrive and return as sets."""
    assert isinstance(a, set) and isinstance(b, set)
    return a | b


@queue.task
def span(ledger: str, tag: str, seconds: float = 0.05) -> str:
    """Append "start TAG t" and "end TAG t" (monotonic clock) around a sleep."""
    with open(ledger, "a") as f:
        f.write(f"start {tag} {time.monotonic()}\n")
    time.sleep(seconds)
    with open(ledger, "a") as f:
        f.write(f"end {tag} {time.monotonic()}\n")
    return tag


@queue.task(concurrency=1)
def one_at_a_time(ledger: str, tag: str) -> str:
    """At most one runs at once, across all workers."""
    return span(ledger, tag)


@queue.task(rate=(4, 0.4))
def paced() -> None:
    """At most 4 start in any 0.4 s, across all workers."""


# -- progress and context (tests/test_progress.py) -------------------------------------------


@queue.task(retries=1)
def steps(ledger: str, n: int, fail_at: int = -1) -> int:
    """Report a checkpoint after each of ``n`` steps; the first attempt fails at ``fail_at``.
    Returns the step it started from (a retry resumes from the last checkpoint)."""
    ctx = job_context()
    start = ctx.progress.state if ctx.progress is not None else 0
    with open(ledger, "a") as f:
        f.write(f"{ctx.id} attempt {ctx.attempt} from {start}\n")
    for i in range(start, n):
        if i == fail_at and ctx.attempt == 1:
            raise RuntimeError(f"failed at step {i}")
        ctx.report_progress((i + 1) / n, f"step {i + 1}", state=i + 1)
    return int(start)


@queue.task
def half_then_wait(gate: str) -> str:
    """Report half way, wait for the file ``gate``, report done."""
    ctx = job_context()
    ctx.report_progress(0.5, "half")
    block_until(gate)
    ctx.report_progress(1.0, "done")
    return ctx.id


def _log_attempt(ledger: str) -> JobContext:
    """Append "ATTEMPT TIME" (monotonic clock) to the ledger; the job's context."""
    ctx = job_context()
    with open(ledger, "a") as f:
        f.write(f"{ctx.attempt} {time.monotonic()}\n")
    return ctx


@queue.task(retries=3)
def retry_twice(ledger: str, delay: float) -> int:
    """Ask for a retry in ``delay`` s on the first two attempts; return the attempt."""
    ctx = _log_attempt(ledger)
    if ctx.attempt < 3:
        ctx.retry(delay, f"not yet ({ctx.attempt})")
    return ctx.attempt


@queue.task(retries=0)
def snooze_twice(ledger: str, delay: float) -> int:
    """Snooze twice, then return the attempt number (snoozes don't count)."""
    ctx = _log_attempt(ledger)
    if len(Path(ledger).read_text().splitlines()) <= 2:
        raise Snooze(delay)
    return ctx.attempt


@queue.task(timeout=0.5)
def overrun(seconds: float, extend: bool) -> str:
    """Sleep past the 0.5 s timeout, having asked for more time if ``extend``."""
    if extend:
        job_context().extend_timeout(seconds + 2)
    time.sleep(seconds)
    return "finished"


@queue.task
async def async_context() -> list[object]:
    """An async task sees its job's context too."""
    ctx = job_context()
    ctx.report_progress(1.0, "async")
    return [ctx.id, ctx.attempt, ctx.task]


@queue.task(retries=1)
def checkpoint_then_hang(state: int) -> object:
    """The first attempt saves ``state`` as its checkpoint and hangs (its worker is killed);
    a later one returns the checkpoint it found."""
    ctx = job_context()
    if ctx.attempt == 1:
        ctx.report_progress(0.5, "saved", state=state)
        time.sleep(60)
    return ctx.progress.state if ctx.progress is not None else None


# -- async def jobs run concurrently in a child (tests/test_async_tasks.py) --------------------
# Ledger lines: "start|end TAG PID ATTEMPT MONOTONIC", each one short write.


def _note(ledger: str, event: str, tag: str) -> None:
    with open(ledger, "a") as f:
        f.write(f"{event} {tag} {os.getpid()} {job_context().attempt} {time.monotonic()}\n")


@queue.task
async def nap(ledger: str, tag: str, seconds: float, once: bool = False) -> list[object]:
    """Sleep ``seconds`` on the child's loop (on the first attempt only if ``once``), noting
    start and end; return the pid and the job id its context gave before and after."""
    before = job_context().id
    _note(ledger, "start", tag)
    job_context().report_progress(0.5, before)
    await asyncio.sleep(seconds if job_context().attempt == 1 or not once else 0)
    _note(ledger, "end", tag)
    return [os.getpid(), before, job_context().id]


@queue.task(retries=0, timeout=0.3)
async def stubborn(ledger: str) -> None:
    """A task that swallows its cancellation and never ends."""
    _note(ledger, "start", "stubborn")
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
