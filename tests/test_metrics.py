"""Worker metrics, health endpoints and JSON logs, through real worker processes."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from prometheus_client.parser import text_string_to_metric_families

import aioqueue.testing
from aioqueue import Queue
from aioqueue.worker.metrics import _Hist
from tests import tasks
from tests._async import eventually
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio

ADD, FAIL, FAIL_RETRIED = "tests.tasks.add", "tests.tasks.fail", "tests.tasks.fail_retried"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_sync(port: int, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


async def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of a GET on the worker's metrics port (in a thread)."""
    return await anyio.to_thread.run_sync(_get_sync, port, path)


class Scrape:
    """One scrape of /metrics, parsed: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(v for n, lab, v in self.samples if n == name and labels.items() <= lab.items())

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


async def scrape(port: int) -> Scrape:
    status, text = await get(port, "/metrics")
    assert status == 200, text
    return Scrape(text)


async def test_metrics_count_jobs_as_redis_does(queue: Queue, start_worker: StartWorker) -> None:
    """After a mix of jobs, the worker's job counters agree with the queue's own counters, the
    depth gauges with queue.info(), and every attempt has a run time; a completed job logs one
    line with its duration."""
    port = _free_port()
    worker = await start_worker("--metrics-port", str(port), processes=2)
    ok = await queue.submit_many(tasks.add, [(i, 1) for i in range(5)])
    await queue.submit_many(tasks.fail, [("no",), ("nope",)])  # no retries: dead at once
    await queue.submit(tasks.fail_retried, "again")  # two retries, then dead
    await eventually(lambda: _counters_reach(queue, completed=5, dead=3), 30, "every job to end")
    info = await queue.info()
    c = info.counters
    assert (c["completed"], c["retried"], c["dead"]) == (5, 2, 3)

    async def agrees() -> bool:
        m = await scrape(port)
        return m.total("aioqueue_jobs_succeeded_total") == c["completed"] and (
            m.total("aioqueue_jobs_dead_total") == c["dead"]
        )

    await eventually(agrees, 10, "the worker's counters to catch up")
    m = await scrape(port)
    q = queue.name
    assert m.total("aioqueue_jobs_retried_total", queue=q) == c["retried"]
    assert m.total("aioqueue_jobs_failed_total", queue=q) == c["retried"] + c["dead"]
    assert m.total("aioqueue_jobs_started_total", queue=q) == 10
    assert m.total("aioqueue_jobs_succeeded_total", queue=q, task=ADD) == 5
    assert m.total("aioqueue_jobs_dead_total", task=FAIL) == 2
    assert m.total("aioqueue_jobs_dead_total", task=FAIL_RETRIED) == 1
    assert m.total("aioqueue_jobs_retried_total", task=FAIL_RETRIED) == 2
    assert m.total("aioqueue_job_run_seconds_count") == 10  # every attempt
    assert m.total("aioqueue_job_wait_seconds_count") == 8  # first attempts only
    assert m.total("aioqueue_job_run_seconds_sum", task=ADD) > 0
    info = await queue.info()
    for state in ("pending", "scheduled", "running", "dead"):
        assert m.total("aioqueue_queue_depth", queue=q, state=state) == getattr(info, state)
    assert m.total("aioqueue_oldest_pending_age_seconds", queue=q) == 0
    assert m.total("aioqueue_redis_up", queue=q) == 1
    assert m.total("aioqueue_worker_processes", queue=q) == 2
    assert m.total("aioqueue_worker_live_processes", queue=q) == 2
    assert m.total("aioqueue_worker_info", queue=q, version=aioqueue_version()) == 1
    for name in ("lease_losses", "fenced", "child_restarts"):
        assert m.has(f"aioqueue_{name}_total"), name
    assert m.has("process_resident_memory_bytes")
    await worker.wait_log(f"✓ {ADD} job {ok[0].id}")


def aioqueue_version() -> str:
    from importlib.metadata import version

    return version("aioqueue")


async def _counters_reach(queue: Queue, **want: int) -> bool:
    counters = (await queue.info()).counters
    return all(counters.get(k, 0) >= v for k, v in want.items())


async def test_depth_and_oldest_pending_age(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """While jobs wait, the depth gauges match queue.info() and the oldest pending job's age
    counts from the oldest job, whatever its priority; with none pending it is 0."""
    port = _free_port()
    await start_worker("--metrics-port", str(port), processes=1)
    go = tmp_path / "go"
    busy = await queue.submit(tasks.block_until, str(go))
    await eventually(lambda: _is_running(busy), 20, "the busy job to start")
    first = await queue.submit(tasks.add, 1, 1)
    submitted = time.time()
    await anyio.sleep(0.2)  # the premise: the high-priority job is born 0.2 s after the first
    await queue.options(priority=5).submit(tasks.add, 2, 2)

    async def waiting() -> Scrape | None:
        m = await scrape(port)
        return m if m.total("aioqueue_oldest_pending_age_seconds") > 0 else None

    m = await eventually(waiting, 10, "a pending age")
    assert isinstance(m, Scrape)
    info = await queue.info()
    assert (info.pending, info.running) == (2, 1), info
    for state in ("pending", "scheduled", "running", "dead"):
        assert m.total("aioqueue_queue_depth", state=state) == getattr(info, state), state
    age = m.total("aioqueue_oldest_pending_age_seconds")
    assert 0.2 <= age < time.time() - submitted + 1.0, age  # the first job's, not the last's
    go.touch()
    assert await busy.result(timeout=20) is True
    assert await first.result(timeout=20) == 2

    async def drained() -> bool:
        m = await scrape(port)
        return (
            m.total("aioqueue_queue_depth", state="pending") == 0
            and m.total("aioqueue_oldest_pending_age_seconds") == 0
        )

    await eventually(drained, 20, "the queue to drain")


async def _is_running(job: Any) -> bool:
    return bool(await job.status() == "running")


async def test_health_follows_redis(
    queue: Queue, start_worker: StartWorker, redis_server: aioqueue.testing.RedisServer
) -> None:
    """Live and ready answer 200 while all is well; with Redis down ready is 503 naming redis
    (live stays 200, and /metrics still answers with redis_up 0); ready returns after."""
    port = _free_port()
    await start_worker("--metrics-port", str(port))
    assert (await get(port, "/health/live"))[0] == 200
    await eventually(lambda: _status_is(port, "/health/ready", 200), 10, "ready")
    redis_server.kill()
    try:
        await eventually(lambda: _status_is(port, "/health/ready", 503), 15, "not ready")
        status, body = await get(port, "/health/ready")
        report = json.loads(body)
        assert report["ready"] is False and "redis" in report["failed"], report
        assert "children" not in report["failed"] and "stopping" not in report["failed"]
        assert (await get(port, "/health/live"))[0] == 200
        m = await scrape(port)
        assert m.total("aioqueue_redis_up") == 0 and not m.has("aioqueue_queue_depth")
    finally:
        redis_server.start()
    await eventually(lambda: _status_is(port, "/health/ready", 200), 30, "ready again")
    assert await (await queue.submit(tasks.add, 2, 3)).result(timeout=20) == 5
    assert (await get(port, "/nowhere"))[0] == 404


async def _status_is(port: int, path: str, status: int) -> bool:
    return (await get(port, path))[0] == status


async def test_ready_is_503_while_no_child_can_start(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """When the task module stops importing, ready is 503 naming the children while the pool
    has none live; once it imports again a child starts, ready is 200, and the restart counts."""
    port, broken = _free_port(), tmp_path / "broken"
    await start_worker(
        "--metrics-port", str(port), "--max-tasks-per-child", "1", "--max-start-failures", "100",
        processes=1, env={"AIOQUEUE_TEST_BREAK_IMPORT": str(broken)},
    )  # fmt: skip
    await eventually(lambda: _status_is(port, "/health/ready", 200), 10, "ready")
    broken.write_text("deployed a bad version")
    assert await (await queue.submit(tasks.add, 1, 2)).result(timeout=20) == 3  # child retires
    await eventually(lambda: _status_is(port, "/health/ready", 503), 15, "not ready")
    report = json.loads((await get(port, "/health/ready"))[1])
    assert list(report["failed"]) == ["children"], report
    assert (await scrape(port)).total("aioqueue_worker_live_processes") == 0
    broken.unlink()
    await eventually(lambda: _status_is(port, "/health/ready", 200), 30, "ready again")
    assert (await scrape(port)).total("aioqueue_child_restarts_total") >= 1


async def test_json_logs_carry_job_fields(queue: Queue, start_worker: StartWorker) -> None:
    """With --log-format json every line is a JSON object; job events carry their fields."""
    worker = await start_worker("--log-format", "json", "--log-level", "debug")
    job = await queue.submit(tasks.add, 20, 22)
    assert await job.result(timeout=20) == 42
    dead = await queue.submit(tasks.fail, "boom")

    def events() -> list[dict[str, Any]]:
        lines = [line for line in worker.output().splitlines() if line.strip()]
        return [json.loads(line) for line in lines]  # every line parses

    def logged() -> bool:  # the dead job's last line, which comes after its "started" line
        return any(e.get("job_id") == dead.id and e.get("event") == "dead" for e in events())

    await eventually(logged, 20, "the dead job's line")
    records = events()
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    done = [r for r in records if r.get("job_id") == job.id]
    assert [r["event"] for r in done] == ["started", "completed"], done
    completed = done[-1]
    assert completed["level"] == "INFO" and completed["task"] == ADD
    assert completed["attempt"] == 1 and isinstance(completed["worker"], str)
    assert 0 <= completed["duration_s"] < 20
    assert completed["message"].endswith(f"✓ {ADD} job {job.id}")
    (failed,) = [r for r in records if r.get("job_id") == dead.id and r["event"] == "dead"]
    assert failed["level"] == "WARNING" and failed["task"] == FAIL and "duration_s" in failed


@pytest.mark.bench
async def test_scrape_cost(queue: Queue, start_worker: StartWorker) -> None:
    """Measures one scrape of /metrics (100 in a row, each with its Redis read); reports the
    figure, asserts nothing about it."""
    port = _free_port()
    await start_worker("--metrics-port", str(port))
    await queue.submit_many(tasks.add, [(i, 0) for i in range(20)])
    await eventually(lambda: _counters_reach(queue, completed=20), 20, "jobs done")
    await scrape(port)

    def hundred() -> float:
        start = time.perf_counter()
        for _ in range(100):
            assert _get_sync(port, "/metrics")[0] == 200
        return time.perf_counter() - start

    took = await anyio.to_thread.run_sync(hundred)
    print(f"\nscrape cost: {took * 10:.2f} ms per scrape (100 scrapes in {took:.3f} s)")


def test_histogram_buckets_count_each_observation_once_bounds_included() -> None:
    """A job's seconds land in the first bucket whose bound is at least that (Prometheus's
    ``le``); the exposition's buckets are cumulative and end at +Inf with the count."""
    h = _Hist()
    for seconds in (0.001, 0.005, 0.0051, 3.0, 1e9):
        h.observe(seconds)
    buckets = dict(h.buckets())
    assert (buckets["0.005"], buckets["0.01"], buckets["2.5"], buckets["5.0"]) == (2, 3, 3, 4)
    assert buckets["1800.0"] == 4 and buckets["+Inf"] == 5
    assert h.sum == pytest.approx(1e9 + 3.0111)
