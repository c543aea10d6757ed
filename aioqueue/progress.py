"""Following a job's progress from a producer: its reports as they come, until it finishes.

A worker records each job's last report in the queue's ``progress`` hash and publishes it on
the job's events channel (see ``worker/progress.py``). :func:`follow` subscribes first, then
reads the last report, so that none falls between the two; it ends when the job's outcome is
recorded, which it learns from the queue's one result subscription (see :mod:`.results`).
Nothing is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from . import wire
from ._redis import as_error, call_redis

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from .queue import Queue

__all__ = ("follow", "last_report")

SUBSCRIBE_TIMEOUT = 10.0  # seconds to wait for Redis to confirm the SUBSCRIBE
IDLE = 5.0  # seconds of one wait for a message (a local wait: nothing is sent to Redis)
DRAIN = 0.05  # seconds to wait, once the job has finished, for reports still on the way


def _decode(data: Any) -> wire.Progress | None:
    try:
        return wire.decode_progress(bytes(data))
    except msgspec.DecodeError:
        return None


async def last_report(queue: Queue, job_id: str) -> wire.Progress | None:
    """The job's last progress report while it waits or runs (None if it made none, or has
    finished: a finished job keeps only its outcome)."""
    data = await call_redis(queue.redis.hget(queue.keys.progress, job_id), queue.redis_url)
    return _decode(data) if data else None


async def follow(queue: Queue, job_id: str) -> AsyncIterator[wire.Progress]:
    """The job's progress reports: the last one made so far, then each new one, until the job
    has finished (however it ended; ``job.result()`` says how).

    :raises JobNotFound: the queue knows no such job.
    :raises RedisUnavailable: Redis can't be reached (a subclass of AioqueueError names the
        cause).
    """
    client = queue._make_client(socket_timeout=SUBSCRIBE_TIMEOUT + IDLE, retries=0)
    pubsub = client.pubsub()
    done: asyncio.Future[bytes] | None = None
    getter: asyncio.Future[Any] | None = None
    latest = 0.0  # the time of the last report yielded: a report comes at most once

    def fresh(msg: Any) -> wire.Progress | None:
        nonlocal latest
        report = _decode(msg["data"]) if msg and msg.get("type") == "message" else None
        if report is None or report.at <= latest:
            return None
        latest = report.at
        return report

    def read(timeout: float) -> asyncio.Future[Any]:
        return asyncio.ensure_future(
            pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        )

    def result(fut: asyncio.Future[Any]) -> Any:
        try:
            return fut.result()
        except Exception as exc:
            raise as_error(exc, queue.redis_url) from exc

    try:
        try:
            await _subscribe(pubsub, queue.keys.events(job_id))
        except Exception as exc:
            raise as_error(exc, queue.redis_url) from exc
        done = asyncio.ensure_future(queue._results.wait(job_id))
        first = await last_report(queue, job_id)
        if first is not None:
            latest = first.at
            yield first
        while not done.done():
            getter = getter or read(IDLE)
            await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                report, getter = fresh(result(getter)), None
                if report is not None:
                    yield report
        done.result()  # JobNotFound, or an error reading outcomes
        # the reports published before the outcome are on their way on our link: read them
        while True:
            getter = getter or read(DRAIN)
            await asyncio.wait({getter}, timeout=DRAIN)
            if not getter.done():
                return
            msg, getter = result(getter), None
            if msg is None:
                return
            report = fresh(msg)
            if report is not None:
                yield report
    finally:
        for fut in (getter, done):
            if fut is not None and not fut.done():
                fut.cancel()
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        with contextlib.suppress(Exception):
            await client.aclose()


async def _subscribe(pubsub: PubSub, channel: str) -> None:
    await pubsub.subscribe(channel)
    while True:
        msg = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT)
        if msg is None:
            raise TimeoutError(f"no reply to SUBSCRIBE in {SUBSCRIBE_TIMEOUT} s")
        if msg.get("type") == "subscribe":
            return
