"""Synchronous producers: ``queue.sync`` from threads, through one background loop, real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio.to_thread
import pytest
import redis

import aioqueue
from aioqueue import Queue, SyncQueue
from aioqueue.testing import RedisServer
from tests import tasks
from tests.conftest import FAST, ROOT, WorkerProcess


def _threads(queue: Queue) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"aioqueue-sync-{queue.name}"]


def _until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait, from a plain thread, until ``predicate()`` is true (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _numsub(r: redis.Redis, queue: Queue) -> int:
    ((_, count),) = r.pubsub_numsub(queue.keys.done_channel)
    return int(count)


@pytest.fixture
def sync(redis_url: str) -> Iterator[SyncQueue]:
    """The tests' queue's blocking handle, on the private server; closed after the test."""
    tasks.queue.redis_url = redis_url
    handle = tasks.queue.sync
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One worker serving tests/tasks.py's queue for this module's tests (jobs submitted before
    it is up simply wait for it)."""
    log = tmp_path_factory.mktemp("sync") / "worker.log"
    w = WorkerProcess(redis_server.url, log, processes=2).start()
    yield
    w.stop()


def test_submit_and_result_from_the_main_thread(sync: SyncQueue, worker: None) -> None:
    """A plain function submits, waits for typed results, and manages jobs, without async."""
    job = sync.submit(tasks.add, 2, 3)
    assert isinstance(job, aioqueue.SyncJob) and job.created
    assert job.result(timeout=20) == 5
    assert job.result() == 5 and job.status() == "complete"
    assert sync.job(job.id).result(timeout=5) == 5
    assert sync.submit("tests.tasks.add", 1, 1).result(timeout=20) == 2
    assert sync.submit(tasks.norm, tasks.Point(x=-1, y=2)).result(20) == tasks.Point(x=1, y=2)
    many = sync.submit_many(tasks.add, [(1, 1), aioqueue.Call(2, b=2)])
    assert [j.result(timeout=20) for j in many] == [2, 4]
    first = sync.options(key="once").submit(tasks.add, 5, 5)
    again = sync.options(key="once").submit(tasks.add, 6, 6)
    assert (again.id, again.created) == (first.id, False)
    assert again.result(timeout=20) == 10
    assert sync.info().pending == 0
    sync.pause()
    assert sync.paused() and sync.info().paused
    sync.resume()
    assert not sync.paused()


def test_twenty_threads_share_one_loop_and_one_subscription(
    sync: SyncQueue, worker: None, sync_redis: redis.Redis
) -> None:
    """Twenty threads submit and wait at once: all results are right, and they share one
    background thread and one pub/sub subscription."""
    start = threading.Barrier(20)

    def one(i: int) -> int:
        start.wait()
        return sync.submit(tasks.add, i, 1).result(timeout=30)

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(one, range(20))) == [i + 1 for i in range(20)]
    assert len(_threads(tasks.queue)) == 1
    _until(lambda: _numsub(sync_redis, tasks.queue) == 1, "one subscription (earlier ones gone)")


def test_errors_are_typed_and_raised_in_the_caller(sync: SyncQueue, worker: None) -> None:
    """Bad submits raise aioqueue's typed errors in the calling thread, before anything is
    written; a failed job raises JobFailed with the remote error."""

    def stranger() -> None: ...

    with pytest.raises(aioqueue.UnknownTask, match="stranger"):
        sync.submit(stranger)
    with pytest.raises(aioqueue.ArgumentError, match="'b'"):
        sync.submit(tasks.add, 1)  # type: ignore[call-overload]
    with pytest.raises(aioqueue.ArgumentError, match="a"):
        sync.submit(tasks.add, "x", 1)  # type: ignore[call-overload]
    with pytest.raises(aioqueue.InvalidOptions, match="delay"):
        sync.options(delay=-1)
    with pytest.raises(aioqueue.JobNotFound):
        sync.job("nope").result(timeout=5)
    assert sync.info().pending == 0
    with pytest.raises(aioqueue.JobFailed, match="ValueError: boom") as raised:
        sync.submit(tasks.fail, "boom").result(timeout=20)
    assert raised.value.type == "ValueError"


def test_timeout_raises_result_timeout_and_the_job_goes_on(sync: SyncQueue) -> None:
    """result(timeout=...) raises ResultTimeout (a TimeoutError); the job can still be
    cancelled afterwards."""
    job = sync.options(delay=60).submit(tasks.add, 1, 1)
    started = time.monotonic()
    with pytest.raises(aioqueue.ResultTimeout):
        job.result(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 5
    assert job.status() == "scheduled"
    assert job.cancel() is True and sync.cancel([job.id]) == [True]
    with pytest.raises(aioqueue.JobCancelled):
        job.result(timeout=5)


def test_keyboard_interrupt_leaves_the_loop_working(sync: SyncQueue) -> None:
    """Ctrl-C in a thread waiting for a result ends that wait only: the background loop drops
    the waiter and goes on serving calls."""
    job = sync.options(delay=60).submit(tasks.add, 1, 1)
    runner = sync._runner
    assert runner is not None
    waiters = runner.queue._results._waiters

    def interrupt() -> None:
        _until(lambda: job.id in waiters, "the waiter")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        job.result()
    _until(lambda: job.id not in waiters, "the waiter to be dropped")
    assert job.status() == "scheduled" and job.cancel() is True
    assert sync._runner is runner and runner.thread.is_alive()


@pytest.mark.anyio
async def test_blocking_call_inside_an_event_loop_is_refused(sync: SyncQueue) -> None:
    """Inside async code a blocking call raises BlockingCallInLoop, naming the call to await,
    and starts no thread; from a worker thread of the same app it works."""
    with pytest.raises(aioqueue.BlockingCallInLoop, match=r"await queue\.submit\(\)"):
        sync.submit(tasks.add, 1, 2)
    with pytest.raises(RuntimeError, match=r"await job\.result\(\)"):
        sync.job("x").result()
    assert sync._runner is None and _threads(tasks.queue) == []
    job = await anyio.to_thread.run_sync(lambda: sync.options(delay=60).submit(tasks.add, 1, 2))
    assert await anyio.to_thread.run_sync(job.status) == "scheduled"


@pytest.mark.anyio
async def test_sync_and_async_use_the_same_queue_at_once(
    queue: Queue, sync: SyncQueue, worker: None
) -> None:
    """An async app awaits the queue on its loop while threads use queue.sync: each side runs
    on its own loop with its own connections, and both get their results."""
    in_thread = anyio.to_thread.run_sync(lambda: sync.submit(tasks.add, 1, 1).result(timeout=20))
    job = await queue.submit(tasks.add, 2, 2)
    assert await in_thread == 2
    assert await job.result(timeout=20) == 4
    assert sync._runner is not None and sync._runner.queue is not queue


def test_close_stops_the_thread_and_reuse_starts_another(
    sync: SyncQueue, worker: None, sync_redis: redis.Redis
) -> None:
    """close() stops the background thread and its subscription; the next call starts anew."""
    assert sync.submit(tasks.add, 1, 1).result(timeout=20) == 2
    (first,) = _threads(tasks.queue)
    sync.close()
    assert not first.is_alive() and sync._runner is None
    _until(lambda: _numsub(sync_redis, tasks.queue) == 0, "the subscription to end")
    job = sync.submit(tasks.add, 2, 1)
    assert job.result(timeout=20) == 3
    (second,) = _threads(tasks.queue)
    assert second is not first
    sync.close()
    sync.close()
    assert sync.job(job.id).result(timeout=5) == 3


def test_close_ends_waits_under_way(sync: SyncQueue) -> None:
    """A call still waiting when close() runs raises AioqueueError instead of hanging."""
    job = sync.options(delay=60).submit(tasks.add, 1, 1)
    runner = sync._runner
    assert runner is not None
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            job.result()
        except BaseException as exc:
            errors.append(exc)

    waiting = threading.Thread(target=wait)
    waiting.start()
    _until(lambda: job.id in runner.queue._results._waiters, "the waiter")
    sync.close()
    waiting.join(10)
    assert len(errors) == 1 and type(errors[0]) is aioqueue.AioqueueError
    assert "closed" in str(errors[0])


def test_handle_is_made_once_per_queue_from_a_clone(redis_url: str) -> None:
    """queue.sync is one handle per queue; its loop works through a clone with the queue's
    settings as they are at the first call, and tasks registered later."""
    q = Queue("cloned", redis_url, result_ttl=60.0, max_connections=7, max_dead=5)
    assert q.sync is q.sync
    try:
        assert q.sync.info().pending == 0
        assert q.sync._runner is not None
        twin = q.sync._runner.queue
        assert twin is not q and twin.tasks is q.tasks
        assert (twin.name, twin.redis_url, twin.result_ttl, twin.max_connections) == (
            "cloned", redis_url, 60.0, 7
        )  # fmt: skip

        @q.task
        def late(x: int) -> int:
            return x

        assert q.sync.options(delay=60).submit(late, 1).status() == "scheduled"
    finally:
        q.sync.close()


def test_flask_dispatcher_runs_jobs_through_a_worker(redis_url: str, tmp_path: Path) -> None:
    """POST /dispatch submits the jobs at the pace asked for and returns their ids; a real
    worker runs them; GET /jobs/<id> reports each one's status and result or error."""
    pytest.importorskip("flask", reason="Flask is not installed: pip install 'flask>=3'")
    from examples import demo_tasks, flask_dispatch

    demo_tasks.queue.redis_url = redis_url
    client = flask_dispatch.app.test_client()
    try:
        bad = client.post("/dispatch", json={"num_messages": 0})
        assert bad.status_code == 400 and "num_messages" in bad.get_json()["error"]
        started = time.monotonic()
        ok = client.post("/dispatch", json={"num_messages": 4, "delay": 0.05, "work_ms": 5})
        assert ok.status_code == 202 and time.monotonic() - started >= 0.15
        ids = ok.get_json()["ids"]
        failing = client.post("/dispatch", json={"num_messages": 1, "fail_rate": 1.0})
        (failed_id,) = failing.get_json()["ids"]
        assert len(set(ids)) == 4
        assert client.get(f"/jobs/{ids[0]}").get_json()["status"] == "pending"
        _run_demo_worker(redis_url, tmp_path / "demo-worker.log")
        for job_id in ids:
            reply = client.get(f"/jobs/{job_id}")
            assert reply.status_code == 200, reply.get_json()
            body = reply.get_json()
            assert body["status"] == "complete" and body["result"]["pid"] > 0, body
        body = client.get(f"/jobs/{failed_id}").get_json()
        assert body["status"] == "dead" and "failed on purpose" in body["error"]
        assert client.get("/jobs/nope").status_code == 404
    finally:
        demo_tasks.queue.sync.close()


def _run_demo_worker(redis_url: str, log: Path) -> None:
    """Run a worker for the demo queue until it has done every job (``--burst``)."""
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "aioqueue", "examples.demo_tasks:queue", "--redis-url",
             redis_url, "--processes", "1", "--burst", *FAST],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
            stderr=subprocess.STDOUT, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, log.read_text()
