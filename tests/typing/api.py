"""The documented usage, type-checked by ``tests/test_typing.py`` (never run)."""

from __future__ import annotations

import aioqueue
from aioqueue import Call, Job, JobFailed, JobStatus, Options, Queue, Submitter

queue = Queue("typed")
tuned = Queue(
    "tuned",
    "redis://localhost:6379/0",
    result_ttl=3600.0,
    max_payload=1 << 16,
    connect_timeout=1.0,
    redis_retries=3,
    max_connections=10,
    dead_ttl=24 * 3600.0,
    max_dead=1000,
)


@queue.task
def render(n: int) -> int:
    return n * n


@queue.task(retries=3, timeout=30.0)
def resize(path: str, width: int) -> str:
    return f"{path}@{width}"


async def produce() -> int:
    async with queue:
        job: Job[int] = await queue.submit(render, 40)
        by_name: Job[object] = await queue.submit("typed.render", 41)
        submitter: Submitter = queue.options(key="k", delay=1.5, priority=2)
        later: Job[str] = await submitter.submit(resize, "a.png", width=10)
        many: list[Job[int]] = await queue.submit_many(render, [(1,), Call(2)])
        mixed: list[Job[int]] = await queue.options(retries=0).submit_many(
            render, [Call(3).with_options(Options(priority=1))]
        )
        try:
            value: int = await job.result(timeout=10.0)
        except JobFailed as exc:
            print(exc.type, exc.error, exc.traceback, exc.attempts)
            raise
        await by_name.result()
        await later.cancel()
        status: JobStatus = await later.status()
        if status == "cancelled":
            print("withdrawn")
        info: aioqueue.QueueInfo = await queue.info()
        dead: list[aioqueue.DeadLetter] = await queue.dead_letters()
        print(info.pending, len(many), len(mixed), len(dead), queue.dead_ttl, queue.max_dead)
        return value


@queue.task
async def fetch(url: str) -> bytes:
    return url.encode()


async def produce_async_task() -> bytes:
    job: Job[bytes] = await queue.submit(fetch, "https://example.org")
    jobs: list[Job[bytes]] = await queue.submit_many(fetch, [("https://example.org",)])
    print(len(jobs))
    return await job.result()
