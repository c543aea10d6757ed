"""Child lifecycle hooks through real workers: start hooks (tests/tasks.py) run once per child
before its jobs, on its event loop too; one that raises fails the child's start; stop hooks run
when a child ends normally, and their errors lose no job."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis

from aioqueue import InvalidOptions, Queue
from tests import tasks
from tests._async import eventually
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio


async def test_start_hooks_run_once_per_child_before_its_jobs(
    queue: Queue, start_worker: StartWorker
) -> None:
    """Every child runs the start hooks once, before its first job; an async hook runs on the
    loop the child's async tasks run on."""
    await start_worker("--max-tasks-per-child", "2", processes=1)
    runs = [await (await queue.submit(tasks.model)).result(timeout=20) for _ in range(3)]
    assert [loads for loads, _, _ in runs] == [1, 1, 1]
    assert all(loaded_in == pid for _, loaded_in, pid in runs)
    assert runs[0][2] == runs[1][2] != runs[2][2]  # the third job ran in a new child
    assert await (await queue.submit(tasks.model_loop)).result(timeout=20) is True


async def test_stop_hooks_run_when_a_child_ends_and_their_errors_lose_no_job(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A child replaced after max_tasks_per_child, and the child of a worker that stops, runs
    the stop hooks (the async one on its loop); a stop hook's error goes to the worker's log,
    the next hook still runs, and every job completes."""
    ledger = tmp_path / "stops"
    worker = await start_worker(
        "--max-tasks-per-child", "2", processes=1, env={"AIOQUEUE_TEST_STOP_LEDGER": str(ledger)}
    )
    pids = [(await (await queue.submit(tasks.model)).result(timeout=20))[2] for _ in range(3)]
    assert pids[0] == pids[1] != pids[2]  # the first child retired after two jobs

    def stopped(pid: int) -> bool:
        lines = set(ledger.read_text().splitlines()) if ledger.exists() else set()
        return {f"{pid} sync", f"{pid} async"} <= lines

    await eventually(lambda: stopped(pids[0]), 10, "the first child's stop hooks")
    await worker.wait_log("RuntimeError: a stop hook that fails")
    assert "the on_child_stop hook tests.tasks._note_stop raised" in worker.output()
    assert not stopped(pids[2])
    worker.signal(signal.SIGTERM)  # the worker stops: its child ends normally too
    assert await worker.exited(10) == 0
    assert stopped(pids[2])


async def test_start_hook_that_raises_fails_the_start_and_hands_jobs_back(
    queue: Queue, start_worker: StartWorker, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """When a replacement child's start hook raises, as often as max_start_failures allows, the
    worker hands back the job it held, unstarted and uncounted, and exits non-zero with the
    hook's error in its log."""
    broken, ledger = tmp_path / "broken", tmp_path / "ledger"
    worker = await start_worker(
        "--prefetch", "1", "--max-tasks-per-child", "1", "--max-start-failures", "1",
        processes=1, env={"AIOQUEUE_TEST_BREAK_START": str(broken)},
    )  # fmt: skip
    first = await queue.submit(tasks.record, str(ledger), "t0", 0.3)
    second = await queue.submit(tasks.record, str(ledger), "t1")
    await eventually(lambda: sync_redis.zcard(queue.keys.leases) == 2, 10, "both held")
    broken.write_text("bad weights")  # the child retires after its job: its successor can't load
    assert await worker.exited(10) != 0
    out = worker.output()
    assert "RuntimeError: model not loaded: bad weights" in out
    assert "(in the on_child_start hook tests.tasks._load_model)" in out
    assert "handing jobs back" in out
    assert await first.result(timeout=5) == "t0"
    assert await second.status() == "pending"
    assert sync_redis.hget(queue.keys.attempts, second.id) in (None, b"0")
    assert [line.split()[0] for line in ledger.read_text().splitlines()] == ["t0"]


def test_hooks_must_take_no_arguments() -> None:
    """A hook that needs arguments is refused when registered, naming it."""
    q = Queue("hooks")

    def needs(x: int) -> None: ...

    with pytest.raises(InvalidOptions, match=r"on_child_start hook .*needs must take no arg"):
        q.on_child_start(needs)
    with pytest.raises(InvalidOptions, match=r"on_child_stop takes a function"):
        q.on_child_stop(42)  # type: ignore[type-var]
    assert q.child_hooks("start") == q.child_hooks("stop") == []
