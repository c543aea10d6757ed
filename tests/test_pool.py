"""The pool of children on its own: real child processes (tests/pool_tasks.py), no Redis."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from aioqueue import wire
from aioqueue.worker.pool import Pool, PoolStartError, Work
from tests._async import eventually

pytestmark = pytest.mark.anyio

SPEC = "tests.pool_tasks:queue"
BROKEN_FLAG = "AIOQUEUE_POOL_TASKS_BROKEN"
Reply = wire.ChildReply | None


class Watch:
    """What the pool told us through its callbacks, and a way to wait for a condition."""

    def __init__(self) -> None:
        self.pool: Pool | None = None
        self.capacities: list[int] = []
        self.queued: list[list[int]] = []  # jobs queued in each child's pipe, at each change
        self.waiting: list[int] = []  # jobs held in the pool, at each change
        self.broken: list[str] = []
        self._changed = asyncio.Event()

    def changed(self) -> None:
        assert self.pool is not None
        self.capacities.append(self.pool.capacity)
        self.queued.append(self.pool.queued)
        self.waiting.append(self.pool.waiting)
        self._changed.set()

    def on_broken(self, message: str) -> None:
        self.broken.append(message)

    async def until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def open_pool(processes: int = 1, **options: Any) -> AsyncIterator[tuple[Pool, Watch]]:
    watch = Watch()
    async with anyio.create_task_group() as tg:
        pool = watch.pool = Pool(
            SPEC,
            processes,
            spawn=tg.start_soon,
            on_change=watch.changed,
            on_broken=watch.on_broken,
            kill_grace=0.5,
            **options,
        )
        try:
            await pool.start()
            yield pool, watch
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close(kill=True)
            tg.cancel_scope.cancel()


def submit(
    pool: Pool, task: str, *args: Any, timeout: float | None = None, **kwargs: Any
) -> tuple[Work, asyncio.Future[Reply]]:
    """Submit ``tests.pool_tasks.<task>``; the future gets what ``on_done`` got."""
    done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    job = wire.ChildJob(
        f"tests.pool_tasks.{task}",
        msgspec.Raw(wire.encode(list(args))),
        msgspec.Raw(wire.encode(kwargs)),
    )
    work = pool.submit(job, timeout, done.set_result)
    return work, done


async def result(done: asyncio.Future[Reply], timeout: float = 10.0) -> Reply:
    with anyio.fail_after(timeout):
        return await done


async def value(pool: Pool, task: str, *args: Any, **kwargs: Any) -> Any:
    reply = await result(submit(pool, task, *args, **kwargs)[1])
    assert reply is not None and reply.ok, reply
    return msgspec.msgpack.decode(reply.value)


def ok(reply: Reply) -> Any:
    assert reply is not None and reply.ok, reply
    return msgspec.msgpack.decode(reply.value)


def error(reply: Reply) -> wire.ErrorInfo:
    assert reply is not None and not reply.ok and reply.error is not None, reply
    return reply.error


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_result_and_error_replies() -> None:
    """Results, raised errors, unknown tasks and bad arguments each come back as their kind."""
    async with open_pool() as (pool, _):
        first = await value(pool, "pid")
        assert await value(pool, "add", 2, 3) == 5
        err = error(await result(submit(pool, "fail", "boom")[1]))
        assert (err.kind, err.type, err.message) == ("raised", "ValueError", "boom")
        assert "ValueError: boom" in err.traceback
        err = error(await result(submit(pool, "async_fail")[1]))
        assert (err.kind, err.type) == ("raised", "KeyError")
        err = error(await result(submit(pool, "nope")[1]))
        assert (err.kind, err.type) == ("unknown_task", "UnknownTask")
        assert "tests.pool_tasks.nope" in err.message
        assert error(await result(submit(pool, "add", "x", 1)[1])).kind == "malformed"
        assert error(await result(submit(pool, "add", 1)[1])).kind == "malformed"
        assert await value(pool, "add", 1, b=2) == 3
        assert await value(pool, "pid") == first  # none of that cost the child its life


async def test_crash_fails_only_its_job_and_the_child_is_replaced() -> None:
    """A child that dies fails its own job as crashed; capacity drops, then comes back."""
    async with open_pool(2) as (pool, watch):
        assert pool.capacity == 2
        _, slow = submit(pool, "sleep", 0.5)
        _, crashed = submit(pool, "crash")
        err = error(await result(crashed))
        assert (err.kind, err.type) == ("crashed", "ChildDied")
        assert "killed by SIGKILL" in err.message
        reply = await result(slow)
        assert reply is not None and reply.ok
        await watch.until(lambda: pool.capacity == 2)
        assert 1 in watch.capacities
        err = error(await result(submit(pool, "exit_now", 3)[1]))
        assert err.kind == "crashed" and "exited with code 3" in err.message
        await watch.until(lambda: pool.capacity == 2)
        assert await value(pool, "add", 1, 1) == 2


async def test_timeout_kills_the_child_and_fails_the_job() -> None:
    """A job past its timeout fails as timeout, its child is killed and replaced."""
    async with open_pool() as (pool, watch):
        before = await value(pool, "pid")
        start = asyncio.get_running_loop().time()
        err = error(await result(submit(pool, "sleep", 30, timeout=0.3)[1]))
        assert asyncio.get_running_loop().time() - start < 5
        assert (err.kind, err.type) == ("timeout", "TimeoutError")
        assert "0.3 s" in err.message
        assert gone(before)
        await watch.until(lambda: pool.capacity == 1)
        assert await value(pool, "pid") != before


async def test_cancel_of_a_waiting_job_never_runs_it(tmp_path: Path) -> None:
    """A job waiting behind a running one is taken back from the pool: it never runs in any
    child, and no child is killed."""
    marker = tmp_path / "ran"
    async with open_pool() as (pool, watch):
        before = await value(pool, "pid")
        _, running = submit(pool, "sleep", 0.3)
        waiting, cancelled = submit(pool, "touch", str(marker))
        assert (pool.waiting, waiting.started) == (1, False)
        pool.cancel(waiting)
        assert cancelled.done() and cancelled.result() is None
        assert pool.waiting == 0
        reply = await result(running)
        assert reply is not None and reply.ok
        assert msgspec.msgpack.decode(reply.value) == before
        assert await value(pool, "pid") == before  # ran after where the touch job was
        assert not marker.exists()
        assert min(watch.capacities) == 1  # no child was lost


async def test_cancel_of_a_running_job_kills_its_child() -> None:
    """Cancelling a started job gives on_done(None) at once and kills (and replaces) its child."""
    async with open_pool() as (pool, watch):
        before = await value(pool, "pid")
        work, done = submit(pool, "sleep", 30)
        assert work.started
        pool.cancel(work)
        assert done.done() and done.result() is None
        assert pool.capacity == 0
        await watch.until(lambda: pool.capacity == 1)
        assert gone(before)
        assert await value(pool, "pid") != before


async def test_start_raises_with_the_import_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task module that can't be imported makes start() raise with the child's error."""
    flag = tmp_path / "broken"
    flag.touch()
    monkeypatch.setenv(BROKEN_FLAG, str(flag))
    async with anyio.create_task_group() as tg:
        pool = Pool(SPEC, 2, spawn=tg.start_soon)
        with pytest.raises(PoolStartError) as info:
            await pool.start()
    message = str(info.value)
    assert pool.broken == message
    assert "RuntimeError: pool_tasks is broken on purpose" in message
    assert "pool_tasks.py" in message  # the traceback's last lines


async def test_pool_breaks_when_children_stop_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After max_start_failures failed replacements the pool is broken: it says why, and hands
    every waiting job back with None."""
    flag = tmp_path / "broken"
    monkeypatch.setenv(BROKEN_FLAG, str(flag))
    async with open_pool(max_start_failures=2) as (pool, watch):
        flag.touch()  # a deploy broke the module: replacements can't import it
        assert error(await result(submit(pool, "crash")[1])).kind == "crashed"
        assert pool.capacity == 0
        work, waiting = submit(pool, "add", 1, 2)
        assert not work.started
        await watch.until(lambda: watch.broken)
        assert await result(waiting, 0) is None
        assert pool.broken is not None and watch.broken == [pool.broken]
        assert "RuntimeError: pool_tasks is broken on purpose" in pool.broken
        assert "2 child processes in a row" in pool.broken
        assert pool.capacity == 0 and pool.waiting == 0
        assert await result(submit(pool, "add", 1, 2)[1]) is None  # refused from now on


async def test_children_recycle_after_max_tasks() -> None:
    """A child is replaced after max_tasks_per_child jobs."""
    async with open_pool(max_tasks_per_child=2) as (pool, watch):
        first = await value(pool, "pid")
        assert await value(pool, "pid") == first
        await watch.until(lambda: pool.capacity == 1)
        assert await value(pool, "pid") != first


async def test_async_tasks_share_one_loop_per_child() -> None:
    """async def tasks in one child run on one event loop, kept between jobs."""
    async with open_pool() as (pool, _):
        loop = await value(pool, "loop_id")
        assert await value(pool, "add", 1, 1) == 2
        error(await result(submit(pool, "async_fail")[1]))
        assert await value(pool, "loop_id") == loop


async def test_close_lets_the_running_job_finish() -> None:
    """close() without kill delivers the running job's reply and hands waiting ones back."""
    async with open_pool() as (pool, _):
        _, running = submit(pool, "sleep", 0.2)
        _, waiting = submit(pool, "add", 1, 2)
        await pool.close()
        reply = await result(running, 0)
        assert reply is not None and reply.ok
        assert await result(waiting, 0) is None


# -- jobs queued in children's pipes ---------------------------------------------------------


async def test_cancel_of_a_job_queued_in_a_child_withdraws_it(tmp_path: Path) -> None:
    """A job queued in a child's pipe behind a long one is withdrawn on cancel: on_done(None)
    comes once the child says it never started it; it never runs, and no child is killed."""
    marker = tmp_path / "ran"
    async with open_pool(prefetch=1) as (pool, watch):
        before = await value(pool, "pid")
        _, running = submit(pool, "sleep", 0.5)
        queued, cancelled = submit(pool, "touch", str(marker))
        await eventually(lambda: queued.queued, 5, "the job queued in the child")
        assert pool.queued == [1] and not queued.started
        pool.cancel(queued)
        assert not cancelled.done()  # the child answers first
        assert await result(cancelled) is None
        assert ok(await result(running)) == before
        assert await value(pool, "pid") == before  # ran after where the touch job was
        assert not marker.exists()
        assert min(watch.capacities) == 1  # no child was lost


async def test_jobs_queued_in_a_killed_child_run_in_another() -> None:
    """A child SIGKILLed with jobs queued behind its running one: that job fails as crashed;
    the queued ones were never started, so they run in another child, each answered once."""
    async with open_pool(prefetch=3) as (pool, watch):
        victim = await value(pool, "pid")
        _, running = submit(pool, "sleep", 30)
        queued = [submit(pool, "pid") for _ in range(3)]
        await eventually(lambda: pool.queued == [3], 5, "three jobs queued in the child")
        os.kill(victim, signal.SIGKILL)
        err = error(await result(running))
        assert (err.kind, err.type) == ("crashed", "ChildDied") and "SIGKILL" in err.message
        pids = {ok(await result(done)) for _, done in queued}
        assert len(pids) == 1 and victim not in pids
        assert all(work.finished and work.run_s is not None for work, _ in queued)
        assert pool.restarts == 1


async def test_short_tasks_queue_deep_and_long_ones_not_at_all() -> None:
    """Adaptive prefetch: once no-op jobs have run, several wait in a child's pipe; jobs of a
    task that runs long are never queued behind another, they wait in the pool instead."""
    async with open_pool(2) as (pool, watch):
        short = [submit(pool, "add", i, 1)[1] for i in range(400)]
        assert [ok(await result(done)) for done in short] == [i + 1 for i in range(400)]
        deepest = [max(q[i] for q in watch.queued if len(q) == 2) for i in range(2)]
        assert max(deepest) >= 2, deepest  # (how they spread depends on which child is free)
        assert pool.times.get("tests.pool_tasks.add") is not None
        watch.queued.clear()
        watch.waiting.clear()
        slow = [submit(pool, "sleep", 0.15)[1] for _ in range(6)]
        for done in slow:
            ok(await result(done))
        assert watch.queued and all(q == [0, 0] for q in watch.queued), watch.queued
        assert max(watch.waiting) >= 1  # held in the pool until a child was free


async def test_pinned_prefetch_queues_whatever_the_run_time() -> None:
    """prefetch=N queues up to N jobs in each child, long or not."""
    async with open_pool(prefetch=2) as (pool, _):
        jobs = [submit(pool, "sleep", 0.2)[1] for _ in range(4)]
        await eventually(lambda: pool.queued == [2] and pool.waiting == 1, 5, "two queued")
        assert pool.target() == 3
        for done in jobs:
            ok(await result(done))


async def test_timeouts_run_from_each_jobs_start() -> None:
    """A queued job's timeout starts when its child starts it, not when it was queued."""
    async with open_pool(prefetch=2) as (pool, _):
        jobs = [submit(pool, "sleep", 0.25, timeout=0.6) for _ in range(3)]
        await eventually(lambda: pool.queued == [2], 5, "two jobs queued behind the first")
        for _, done in jobs:
            ok(await result(done))  # 0.75 s in all, yet none timed out
        first, second = jobs[0][0], jobs[1][0]
        assert first.run_s is not None and second.started_at >= first.started_at + first.run_s
        _, running = submit(pool, "sleep", 0.4)  # no timeout of its own
        late, killed = submit(pool, "sleep", 30, timeout=0.3)
        await eventually(lambda: late.queued, 5, "the job queued")
        ok(await result(running))  # not cut short by the timeout of the job behind it
        err = error(await result(killed))
        assert (err.kind, err.type) == ("timeout", "TimeoutError") and "0.3 s" in err.message
        assert late.run_s is not None and late.run_s >= 0.3


async def test_an_idle_child_takes_over_jobs_queued_behind_a_long_one() -> None:
    """Jobs queued in a child whose job runs long are withdrawn and run by a child that has
    nothing to do, while the long job goes on."""
    async with open_pool(2, prefetch=4) as (pool, _):
        long_work, long_job = submit(pool, "sleep", 5)
        _, short_job = submit(pool, "sleep", 0.3)
        queued = [submit(pool, "pid") for _ in range(4)]
        await eventually(lambda: sum(pool.queued) == 4, 5, "four jobs queued")
        long_child = long_work.child
        assert long_child is not None and long_child.queued >= 1  # some wait behind the long job
        pids = {ok(await result(done)) for _, done in queued}
        assert not long_job.done()  # all ran before the long job ended
        assert pids == {ok(await result(short_job))}  # in the child that was free
        pool.cancel(long_work)


async def test_broken_pool_hands_back_jobs_queued_in_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the pool breaks, jobs queued in a live child are withdrawn and handed back with
    None; the job that child is running goes on to its end."""
    flag = tmp_path / "broken"
    monkeypatch.setenv(BROKEN_FLAG, str(flag))
    go = tmp_path / "go"
    async with open_pool(2, prefetch=2, max_start_failures=1) as (pool, watch):
        _, first = submit(pool, "wait_for", str(go))  # runs until the pool has broken
        victim, second = submit(pool, "sleep", 30)
        queued = [submit(pool, "pid")[1] for _ in range(3)]
        await eventually(lambda: sum(pool.queued) == 3, 5, "three jobs queued")
        flag.touch()  # a deploy broke the module: the replacement can't import it
        assert victim.child is not None
        os.kill(victim.child.pid, signal.SIGKILL)
        assert error(await result(second)).kind == "crashed"
        await watch.until(lambda: watch.broken)
        assert [await result(done) for done in queued] == [None, None, None]
        go.touch()
        ok(await result(first))
        assert pool.waiting == 0 and pool.target() == 0


async def test_close_hands_back_queued_jobs_and_finishes_the_running_one() -> None:
    """close() without kill withdraws the jobs queued in a child; its running job finishes."""
    async with open_pool(prefetch=2) as (pool, _):
        _, running = submit(pool, "sleep", 0.3)
        queued = [submit(pool, "add", 1, 2) for _ in range(2)]
        await eventually(lambda: pool.queued == [2], 5, "two jobs queued")
        await pool.close()
        ok(await result(running, 0))
        assert [await result(done, 0) for _, done in queued] == [None, None]


async def test_a_child_whose_input_ends_runs_at_most_one_more_job() -> None:
    """End of input with jobs still queued (as when its supervisor is gone): the child finishes
    its job and at most one more, then exits; the pool runs the rest in another child."""
    async with open_pool(prefetch=3) as (pool, _):
        first = await value(pool, "pid")
        running, done = submit(pool, "sleep", 0.3)
        queued = [submit(pool, "pid")[1] for _ in range(3)]
        await eventually(lambda: pool.queued == [3], 5, "three jobs queued")
        assert running.child is not None
        running.child.close_input()
        assert ok(await result(done)) == first
        pids = [ok(await result(job)) for job in queued]
        assert pids.count(first) <= 1 and len(set(pids) - {first}) == 1


async def test_cancel_of_several_jobs_queued_in_one_child_stops_each(tmp_path: Path) -> None:
    """Two of three jobs queued behind a running one in the same child are cancelled: neither
    ever runs, the third does, and no child is killed."""
    marks = [tmp_path / f"m{i}" for i in range(3)]
    async with open_pool(prefetch=3) as (pool, watch):
        before = ok(await result(submit(pool, "pid")[1]))
        _, running = submit(pool, "sleep", 0.5)
        queued = [submit(pool, "touch", str(m)) for m in marks]
        await eventually(lambda: pool.queued == [3], 5, "three jobs queued in the child")
        pool.cancel(queued[0][0])
        pool.cancel(queued[2][0])
        assert await result(queued[0][1]) is None and await result(queued[2][1]) is None
        assert ok(await result(running)) == before
        ok(await result(queued[1][1]))
        assert ok(await result(submit(pool, "pid")[1])) == before  # same child throughout
        assert [m.exists() for m in marks] == [False, True, False]
        assert min(watch.capacities) == 1  # no child was lost
