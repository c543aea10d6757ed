"""The ``aioqueue`` command against the private Redis with real jobs (in-process, and as a real
subprocess where the process itself matters: exit codes, one-line errors, Ctrl-C)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
import time
from typing import Any

import anyio
import pytest
import redis

import aioqueue
from aioqueue import Queue, wire
from aioqueue.admin.cli import main as admin_main
from aioqueue.job import new_job_id
from aioqueue.keys import REGISTRY, Keys
from aioqueue.views import last_minute
from tests import tasks
from tests._async import eventually
from tests.conftest import ROOT, StartWorker

pytestmark = pytest.mark.anyio


class Ran:
    """A finished command: exit code, stdout, stderr; ``json`` parses stdout."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def json(self) -> Any:
        return json.loads(self.out)


async def aq(url: str, *args: str, stdin: bytes = b"") -> Ran:
    """Run the command's ``main(ARGS --redis-url URL)`` in a thread, its standard streams
    captured as pipes would be (not a terminal): the same code path as ``python -m
    aioqueue.admin`` without a new interpreter per call (``aq_process`` runs the real one)."""

    def run() -> Ran:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdin, sys.stdout, sys.stderr
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
        sys.stdout, sys.stderr = out, err
        try:
            admin_main([*args, "--redis-url", url])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        else:  # pragma: no cover - main always exits
            code = 0
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved
        return Ran(code, out.getvalue(), err.getvalue())

    return await anyio.to_thread.run_sync(run)


async def aq_process(url: str, *args: str, stdin: bytes = b"") -> Ran:
    """Run ``python -m aioqueue.admin ARGS --redis-url URL`` (stdin and stdout are pipes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOQUEUE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aioqueue.admin", *args, "--redis-url", url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def one_line(r: Ran) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert r.code != 0 and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    return r.err


async def test_info_finds_queues_in_the_registry_with_their_oldest_pending_job(
    queue: Queue, redis_url: str, sync_redis: redis.Redis
) -> None:
    """``submit`` registers its queue; ``info`` with no names lists the registered queues,
    with counts and the oldest pending job whatever its priority."""
    first = (await aq(redis_url, "submit", "tests", "tests.tasks.add", "1", "2", "--json")).json
    assert sync_redis.sismember(REGISTRY, "tests")
    await queue.options(priority=5).submit(tasks.add, 3, 4)
    await queue.options(delay=60).submit(tasks.noop)
    [q] = (await aq(redis_url, "info", "--json")).json["queues"]
    assert q["queue"] == "tests" and (q["pending"], q["scheduled"], q["running"]) == (2, 1, 0)
    assert q["oldest_pending"]["id"] == first["id"] and q["oldest_pending"]["exact"]
    assert 0 <= q["oldest_pending"]["age_s"] < 60
    text = await aq(redis_url, "info", "tests")
    assert text.code == 0 and "pending" in text.out and first["id"] in text.out


async def test_info_answers_at_once_on_100k_pending_jobs(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """info reads no more than a few entries of a long queue: one script call well under a
    second on 100k pending jobs (1M in the benchmark figures)."""
    k = Keys("big")
    for _ in range(5):
        ids = [new_job_id() for _ in range(20_000)]
        env = wire.encode(wire.Envelope(v=1, id="x", task="tests.tasks.noop"))
        p = sync_redis.pipeline(transaction=False)
        p.zadd(k.pending, {i: -(n % 3) for n, i in enumerate(ids)})
        p.hset(k.jobs, mapping=dict.fromkeys(ids, env))
        p.execute()
    async with Queue("big", redis_url) as q:
        started = time.perf_counter()
        overview = await q.scripts.overview()
        assert time.perf_counter() - started < 1.0
    assert overview.pending == 100_000 and len(overview.level_heads) == 3
    [q] = (await aq(redis_url, "info", "big", "--json")).json["queues"]
    assert q["pending"] == 100_000
    assert q["oldest_pending"]["id"] == min(overview.level_heads)


async def test_worker_jobs_and_dead_letters_through_the_command(
    queue: Queue, redis_url: str, start_worker: StartWorker, sync_redis: redis.Redis
) -> None:
    """info lists the live worker; job shows a running job's holder, and cancel stops it; job
    shows a result, and a dead job's errors; dlq lists, shows, retries (keeping the error
    history) and purges."""
    worker = await start_worker()
    slow = await queue.submit(tasks.sleep_for, 60)
    [q] = (await aq(redis_url, "info", "tests", "--json")).json["queues"]
    [w] = q["workers"]
    assert w["pid"] == worker.pid and w["live"] and w["heartbeat_deadline_in_s"] > 0

    async def running() -> Any:
        d = (await aq(redis_url, "job", slow.id, "--json")).json
        return d if d["state"] == "running" else None

    held = await eventually(running, 10, "running job")
    assert held["holder"] == w["id"] and held["lease_deadline"] is not None  # type: ignore[index]

    async def holding() -> Any:  # the worker says at its next heartbeat what it holds
        [q] = (await aq(redis_url, "info", "tests", "--json")).json["queues"]
        return q["workers"][0] if q["workers"][0]["in_flight"] == 1 else None

    w = await eventually(holding, 10, "the worker's jobs in flight")
    assert w["processes"] == 1 and w["started"] <= time.time()  # type: ignore[index]
    text = (await aq(redis_url, "info", "tests")).out
    assert "in flight" in text and "last minute" in text
    r = await aq(redis_url, "cancel", slow.id, "--json")  # a running job: its child is killed
    assert r.code == 0 and r.json["cancelled"] == [slow.id], r.err
    with pytest.raises(aioqueue.JobCancelled):
        await slow.result(timeout=20)

    ok = await queue.submit(tasks.add, 1, 2)
    assert await ok.result(timeout=20) == 3
    d = (await aq(redis_url, "job", ok.id, "--json")).json
    assert (d["state"], d["task"], d["result"]) == ("complete", "tests.tasks.add", 3)
    assert d["args"] is None  # a completed job's data is deleted; its outcome is kept
    bad = await queue.submit(tasks.fail, "nope")
    with pytest.raises(aioqueue.JobFailed):
        await bad.result(timeout=20)
    [row] = (await aq(redis_url, "dlq", "list", "--json")).json["dead_letters"]
    assert row["id"] == bad.id and row["last_error"]["type"] == "ValueError"
    stats = {k.decode(): int(v) for k, v in sync_redis.hgetall(queue.keys.stats).items()}
    now_ms = int(sync_redis.time()[0]) * 1000
    slot = (now_ms // 60000) % 2
    if stats[f"minute:{slot}"] == now_ms // 60000:  # else the minute turned after the finish
        assert stats[f"completed:{slot}"] >= 1 and stats[f"failed:{slot}"] == 1
        counts = {"completed": stats[f"completed:{slot}"], "failed": 1}
        assert last_minute(stats, now_ms + 60000) == counts == last_minute(stats, now_ms, 0)
        assert last_minute(stats, now_ms + 120000) == {"completed": 0, "failed": 0}
    assert "minute:0" not in (await queue.info()).counters
    [shown] = (await aq(redis_url, "dlq", "show", "--id", bad.id, "--json")).json["dead_letters"]
    assert shown["state"] == "dead" and "ValueError: nope" in shown["errors"][0]["traceback"]

    refused = await aq(redis_url, "dlq", "retry", "--all")
    assert "pass --yes" in one_line(refused) and sync_redis.zscore(queue.keys.dead, bad.id)
    retried = await aq(redis_url, "dlq", "retry", "--error", "ValueError", "--yes", "--json")
    assert retried.json["retried"] == 1
    await eventually(lambda: sync_redis.zscore(queue.keys.dead, bad.id), 20, "dead again")
    d = (await aq(redis_url, "job", bad.id, "--json")).json
    assert d["state"] == "dead" and [e["message"] for e in d["errors"]] == ["nope", "nope"]
    purged = await aq(redis_url, "dlq", "purge", "--task", "tests.tasks.fail", "--yes", "--json")
    assert purged.json["purged"] == 1 and sync_redis.zcard(queue.keys.dead) == 0


async def test_submit_with_kwargs_then_cancel(queue: Queue, redis_url: str) -> None:
    """submit takes JSON arguments and options; cancel withdraws the job and fails (one
    line, exit 1) for an id no queue knows."""
    r = await aq(redis_url, "submit", "tests", "tests.tasks.add", "1", "--kwargs", '{"b": 2}',
                 "--delay", "60", "--json")  # fmt: skip
    job_id = r.json["id"]
    d = (await aq(redis_url, "job", job_id, "--queue", "tests", "--json")).json
    assert d["state"] == "scheduled" and d["args"] == [1] and d["kwargs"] == {"b": 2}
    r = await aq(redis_url, "cancel", job_id, "--json")
    assert r.code == 0 and r.json["cancelled"] == [job_id]
    assert await queue.job(job_id).status() == "cancelled"
    r = await aq(redis_url, "cancel", "nosuchjob", "--json")
    assert r.json["not_cancelled"] == {"nosuchjob": "unknown"}
    assert "no queue knows it" in one_line(r)
    assert "argument 1 is not JSON" in one_line(
        await aq(redis_url, "submit", "tests", "tests.tasks.add", "{oops")
    )


async def test_errors_are_one_line_and_a_non_zero_exit(queue: Queue, redis_url: str) -> None:
    """An unknown job, Redis down and bad usage each give one line on stderr."""
    await queue.register()
    assert "not found" in one_line(await aq_process(redis_url, "job", "nosuchjob"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    assert "unavailable" in one_line(await aq_process(closed, "info", "tests"))
    r = await aq(redis_url, "dlq", "retry")
    assert "select with --id" in one_line(r)
    r = await aq(redis_url, "info", "--watch", "-1")
    assert r.code == 2 and "must be > 0" in one_line(r)


async def test_purge_deletes_every_key_of_the_queue(
    queue: Queue, redis_url: str, sync_redis: redis.Redis
) -> None:
    """purge asks first (refused without --yes off a terminal), then deletes the queue's
    keys, per-job ones included, and its registry entry; other queues are untouched."""
    await queue.register()
    await queue.options(key="once").submit(tasks.noop)
    await queue.options(delay=60).submit(tasks.add, 1, 2)
    await queue.pause()  # the pause flag is a key of the queue too
    other = Keys("other")
    sync_redis.zadd(other.pending, {"x": 0})
    assert "pass --yes" in one_line(await aq(redis_url, "purge", "tests"))
    assert sync_redis.exists(queue.keys.jobs)
    r = await aq(redis_url, "purge", "tests", "--yes", "--json")
    assert r.json["jobs"] == 2 and r.json["keys_deleted"] >= 4
    assert sync_redis.keys(queue.keys.prefix + "*") == []
    assert not sync_redis.sismember(REGISTRY, "tests") and sync_redis.exists(other.pending)


async def test_doctor_flags_persistence_and_eviction(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The private server runs without AOF: a persistence risk (exit 1); an evicting
    maxmemory-policy is flagged too."""
    r = await aq(redis_url, "doctor", "tests", "--json")
    found = {f["check"]: f for f in r.json["findings"]}
    assert r.code == 1 and found["persistence"]["level"] == "risk"
    assert "appendonly" in found["persistence"]["fix"]
    assert found["maxmemory-policy"]["level"] == "ok" and found["acl"]["level"] == "ok"
    assert found["version"]["level"] == "ok" and "median" in found["latency"]["detail"]
    before = sync_redis.config_get("maxmemory-policy")["maxmemory-policy"]
    sync_redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        r = await aq(redis_url, "doctor", "--json")
    finally:
        sync_redis.config_set("maxmemory-policy", before)
    found = {f["check"]: f for f in r.json["findings"]}
    assert found["acl"]["level"] == "note" and "no queue named" in found["acl"]["detail"]
    assert found["maxmemory-policy"]["level"] == "risk"
    assert found["maxmemory-policy"]["fix"] == "maxmemory-policy noeviction"


async def test_info_watch_refreshes_until_interrupted(queue: Queue, redis_url: str) -> None:
    """info --watch prints a fresh result each period and exits 0 on Ctrl-C."""
    await queue.submit(tasks.noop)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOQUEUE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aioqueue.admin", "info", "tests", "--watch", "0.1", "--json",
        "--redis-url", redis_url, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [await asyncio.wait_for(proc.stdout.readline(), 10) for _ in range(2)]
    assert [json.loads(s)["queues"][0]["pending"] for s in lines] == [1, 1]
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_pause_and_resume_commands(queue: Queue, redis_url: str) -> None:
    """pause and resume take several queues, print one line each (one JSON line with --json),
    say when nothing changed, and warn about a name the registry doesn't know; info shows the
    flag, and doctor notes a paused queue with pending jobs."""
    await queue.register()
    await queue.submit(tasks.noop)
    r = await aq(redis_url, "pause", "tests", "--json")
    assert r.code == 0 and r.out.count("\n") == 1 and r.err == ""
    assert r.json == {"queues": [{"queue": "tests", "paused": True, "changed": True,
                                  "pending": 1, "running": 0}]}  # fmt: skip
    assert await queue.paused()
    r = await aq(redis_url, "pause", "tests", "typo")
    assert r.out.splitlines() == [
        "queue tests: already paused (1 pending wait, 0 running finish)",
        "queue typo: paused (0 pending wait, 0 running finish)",
    ]
    assert r.err == "aioqueue: queue 'typo' is not in the registry: check its name\n"
    [q] = (await aq(redis_url, "info", "tests", "--json")).json["queues"]
    assert q["paused"] is True
    text = (await aq(redis_url, "info", "tests")).out.splitlines()
    assert ["paused", "yes:", "workers", "claim", "nothing"] in [ln.split() for ln in text]
    found = {
        f["check"]: f for f in (await aq(redis_url, "doctor", "tests", "--json")).json["findings"]
    }
    assert (
        found["paused"]["level"] == "note" and "1 job(s) are pending" in found["paused"]["detail"]
    )
    assert found["paused"]["fix"] == "aioqueue resume tests"

    r = await aq(redis_url, "resume", "tests", "typo", "--json")
    assert [(d["queue"], d["paused"], d["changed"]) for d in r.json["queues"]] == [
        ("tests", False, True), ("typo", False, True),
    ]  # fmt: skip
    assert not await queue.paused()
    assert (
        await aq(redis_url, "resume", "tests")
    ).out == "queue tests: was not paused (1 pending)\n"
    [q] = (await aq(redis_url, "info", "tests", "--json")).json["queues"]
    assert q["paused"] is False
    found = {
        f["check"]: f for f in (await aq(redis_url, "doctor", "tests", "--json")).json["findings"]
    }
    assert "paused" not in found
