"""The documented usage, type-checked by ``tests/test_typing.py`` (never run)."""

from __future__ import annotations

import aioqueue
from aioqueue import Call, Job, JobFailed, Queue

queue = Queue("typed")


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
        later: Job[str] = await queue.options(key="k", delay=1.5, priority=2).submit(
            resize, "a.png", width=10
        )
        many: list[Job[int]] = await queue.submit_many(render, [(1,), Call(2)])
        try:
            value: int = await job.result(timeout=10.0)
        except JobFailed as exc:
            print(exc.type, exc.error, exc.traceback)
            raise
        await by_name.result()
        await later.cancel()
        info: aioqueue.QueueInfo = await queue.info()
        print(info.pending, len(many))
        return value


@queue.task
async def fetch(url: str) -> bytes:
    return url.encode()


async def produce_async_task() -> bytes:
    job: Job[bytes] = await queue.submit(fetch, "https://example.org")
    return await job.result()
