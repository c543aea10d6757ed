"""The submit path below ``Queue.submit``: a job checked and encoded, submits joined, room.

:func:`prepare` checks a job against its task and encodes it. The :class:`Coalescer` sends
prepared jobs: a submit with none other on its way is sent at once, from its caller's task (no
extra turn of the event loop, no task); submits made while one is on its way, or in the same
turn of the loop, are joined and sent together, :data:`MAX_BATCH` jobs per script call, so many
coroutines submitting at once cost a round trip or two, not one each. When a queue with a
``max_pending`` bound is full, :meth:`Coalescer.until_room` sends the refused jobs again (same
ids: a job never goes in twice) whenever a claim makes room.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from . import tracing, wire
from .errors import PayloadTooLarge
from .job import new_job_id
from .options import NO_OPTIONS, Options
from .script_values import NewJob
from .task import TaskDef, unencodable_error

__all__ = ("MAX_BATCH", "Coalescer", "Reply", "prepare")

MAX_BATCH = 1000  # jobs per submit script call

Reply = tuple[str, int]  # per job: its id, and 1 created, 0 a duplicate, -1 no room (see scripts)


def prepare(
    name: str,
    td: TaskDef | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: Options,
    max_payload: int,
) -> NewJob:
    """Check a job's options and arguments against its task, and encode it.

    :raises InvalidOptions, ArgumentError, SerializationError, PayloadTooLarge: nothing sent.
    """
    if opts is not NO_OPTIONS:
        opts.validate()
    if td is not None:  # after other jobs: their result(s) come first, when it runs
        args, kwargs = td.check(args, kwargs, later=1 if opts.after else 0)
    try:
        raw_args = wire.encode(list(args)) if args else None
        raw_kwargs = wire.encode(kwargs) if kwargs else None
    except (TypeError, ValueError, OverflowError):
        if td is not None:
            raise td.unencodable(args, kwargs) from None
        raise unencodable_error(name, args, kwargs) from None
    group, limit = opts.group, opts.group_limit
    if group is None and td is not None and td.concurrency is not None and not opts.after:
        group, limit = f"task:{name}", td.concurrency
    job_id = new_job_id()
    now = time.time()
    env = wire.Envelope(
        v=wire.WIRE_VERSION,
        id=job_id,
        task=name,
        args=msgspec.Raw(raw_args) if raw_args is not None else wire.EMPTY_ARGS,
        kwargs=msgspec.Raw(raw_kwargs) if raw_kwargs is not None else wire.EMPTY_KWARGS,
        retries=opts.retries if opts.retries is not None else (td.retries if td else None),
        timeout=opts.timeout if opts.timeout is not None else (td.timeout if td else None),
        priority=opts.priority,
        key=opts.key,
        result_ttl=opts.result_ttl,
        submitted=now,
        trace=tracing.inject(),
        expires=now + opts.expires if opts.expires is not None else None,
        after=list(opts.after) or None,
        group=group,
    )
    data = wire.encode(env)
    if len(data) > max_payload:
        raise PayloadTooLarge(
            f"{name}: encoded job is {len(data):,} bytes, over the queue's "
            f"max_payload limit of {max_payload:,} bytes"
        )
    rate = opts.rate or (td.rate if td is not None else None)
    spec = ""
    if rate is not None:
        spec = f"{opts.rate_key or f'task:{name}'} {rate[0]} {max(1, round(rate[1] * 1000))}"
    delay = opts.debounce if opts.debounce is not None else opts.delay
    return NewJob(job_id, data, opts.priority, int(delay * 1000), opts.key, opts.after,
                    group, limit, spec, opts.debounce is not None)  # fmt: skip


class Coalescer:
    """Sends prepared jobs through ``send`` (one script call per list), joining submits."""

    def __init__(self, send: Callable[[list[NewJob]], Awaitable[list[Reply]]]) -> None:
        self._send = send
        self._batch: list[tuple[NewJob, asyncio.Future[Reply]]] = []
        self._direct = False  # a submit is being sent straight from its caller's task
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, prepared: list[NewJob]) -> list[Reply]:
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

    async def until_room(
        self, prepared: list[NewJob], replies: list[Reply], room: Callable[[], asyncio.Event]
    ) -> list[Reply]:
        """Send the jobs a full queue refused (reply -1) again each time a claim makes room
        (``room()``, taken before each send so that no claim's signal is missed), or at the
        latest after a backoff of up to 2 s, until all are in."""
        wait = 0.05
        while True:
            full = [i for i, (_, r) in enumerate(replies) if r < 0]
            if not full:
                return replies
            signal = room()
            for i, reply in zip(full, await self.submit([prepared[i] for i in full]), strict=True):
                replies[i] = reply
            if any(r < 0 for _, r in replies):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await signal.wait()
                wait = min(wait * 2, 2.0)

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

    async def _flush_batch(self, batch: list[tuple[NewJob, asyncio.Future[Reply]]]) -> None:
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
