"""The documented synchronous usage (``queue.sync``), type-checked like ``api.py`` (never run)."""

from __future__ import annotations

import aioqueue
from aioqueue import Call, JobFailed, JobStatus, Queue, SyncJob, SyncQueue, SyncSubmitter

queue = Queue("typed")


@queue.task
def render(n: int) -> int:
    return n * n


@queue.task(retries=3, timeout=30.0)
def resize(path: str, width: int) -> str:
    return f"{path}@{width}"


@queue.task
async def fetch(url: str) -> bytes:
    return url.encode()


def produce() -> int:
    sync: SyncQueue = queue.sync
    job: SyncJob[int] = sync.submit(render, 40)
    by_name: SyncJob[object] = sync.submit("typed.render", 41)
    submitter: SyncSubmitter = sync.options(key="k", delay=1.5, priority=2)
    later: SyncJob[str] = submitter.submit(resize, "a.png", width=10)
    many: list[SyncJob[int]] = sync.submit_many(render, [(1,), Call(2)])
    fetched: SyncJob[bytes] = sync.submit(fetch, "https://example.org")
    try:
        value: int = job.result(timeout=10.0)
    except JobFailed as exc:
        print(exc.type, exc.error, exc.traceback, exc.attempts)
        raise
    except aioqueue.ResultTimeout:
        raise
    print(by_name.result(), fetched.result(), job.id, job.created)
    status: JobStatus = later.status()
    cancelled: bool = later.cancel()
    again: SyncJob[object] = sync.job(job.id)
    flags: list[bool] = sync.cancel([job.id, again.id])
    info: aioqueue.QueueInfo = sync.info()
    dead: list[aioqueue.DeadLetter] = sync.dead_letters()
    moved: int = sync.requeue_dead([d.id for d in dead]) + sync.purge_dead([])
    print(status, cancelled, flags, info.pending, len(many), moved)
    sync.close()
    return value
