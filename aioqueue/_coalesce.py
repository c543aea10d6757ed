"""Submits travel together: the producer's coalescer, between ``Queue.submit`` and the script.

A submit with none other on its way is sent at once, from its caller's task: no extra turn of
the event loop, no task. Submits made while one is on its way, or in the same turn of the loop,
are joined and sent together, :data:`MAX_BATCH` jobs per script call, so many coroutines
submitting at once cost a round trip or two, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ("MAX_BATCH", "Coalescer", "Prepared", "Reply")

MAX_BATCH = 1000  # jobs per submit script call

Reply = tuple[str, bool]  # (job id, created) per submitted job


class Prepared:
    """One job checked and encoded, ready for the submit script."""

    __slots__ = ("id", "data", "priority", "delay_ms", "key")

    def __init__(self, id: str, data: bytes, priority: int, delay_ms: int, key: str | None):
        self.id = id
        self.data = data
        self.priority = priority
        self.delay_ms = delay_ms
        self.key = key


class Coalescer:
    """Sends prepared jobs through ``send`` (one script call per list), joining submits."""

    def __init__(self, send: Callable[[list[Prepared]], Awaitable[list[Reply]]]) -> None:
        self._send = send
        self._batch: list[tuple[Prepared, asyncio.Future[Reply]]] = []
        self._direct = False  # a submit is being sent straight from its caller's task
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, prepared: list[Prepared]) -> list[Reply]:
        """Each job's reply, in order.

        :raises: the first batch's error if any of this call's batches failed.
        """
        if not prepared:
            return []
        if not self._batch and not self._direct and len(prepared) <= MAX_BATCH:
            self._direct = True
            try:
                return await self._send(prepared)
            finally:
                self._direct = False
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Reply]] = [loop.create_future() for _ in prepared]
        if not self._batch:
            loop.call_soon(self._flush)
        self._batch.extend(zip(prepared, futs, strict=True))
        if len(futs) == 1:  # await the one future itself
            return [await futs[0]]
        await asyncio.wait(futs)
        errors = [f.exception() for f in futs if f.cancelled() or f.exception() is not None]
        if errors:
            raise errors[0] or asyncio.CancelledError()
        return [f.result() for f in futs]

    async def drain(self) -> None:
        """Wait for the batches on their way."""
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        for i in range(0, len(batch), MAX_BATCH):
            task = asyncio.ensure_future(self._flush_batch(batch[i : i + MAX_BATCH]))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_batch(self, batch: list[tuple[Prepared, asyncio.Future[Reply]]]) -> None:
        try:
            replies = await self._send([p for p, _ in batch])
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), reply in zip(batch, replies, strict=True):
            if not fut.done():
                fut.set_result(reply)
