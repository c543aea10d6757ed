"""``queue.map``: a task over many inputs, results as they complete, in bounded memory.

The inputs are read lazily and submitted in batches; at most ``window`` jobs are submitted and
not yet finished at any time, so a map over ten million inputs holds ``window`` handles, and a
producer that outruns the workers waits for them (backpressure on the input) instead of filling
Redis. Every job lives in Redis like any other: if the mapping producer dies, the submitted jobs
still run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import InvalidOptions
from .options import Call

if TYPE_CHECKING:
    from .job import Job
    from .options import Submits

__all__ = ("map_jobs",)

BATCH = 500  # inputs submitted per round trip, at most


async def map_jobs(
    submits: Submits,
    fn: Callable[..., Any] | str,
    inputs: Iterable[Any] | AsyncIterable[Any],
    window: int,
    return_exceptions: bool,
) -> AsyncIterator[Any]:
    """See :meth:`aioqueue.Queue.map`."""
    if type(window) is not int or window < 1:
        raise InvalidOptions(f"window must be an int >= 1, got {window!r}")
    items = _aiter(inputs)
    waiting: dict[asyncio.Task[Any], Job[Any]] = {}
    done_reading = False
    try:
        while True:
            while len(waiting) < window and not done_reading:
                calls: list[tuple[Any, ...] | Call] = []
                while len(calls) < min(window - len(waiting), BATCH):
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        done_reading = True
                        break
                    calls.append(item if isinstance(item, Call) else (item,))
                for job in await submits.submit_many(fn, calls):
                    waiting[asyncio.ensure_future(job.result())] = job
            if not waiting:
                return
            finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                del waiting[task]
                exc = task.exception()
                if exc is None:
                    yield task.result()
                elif return_exceptions:
                    yield exc
                else:
                    raise exc
    finally:
        for task in waiting:  # the jobs go on in the workers; only the waits end here
            task.cancel()


async def _aiter(inputs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(inputs, AsyncIterable):
        async for item in inputs:
            yield item
    else:
        for item in inputs:
            yield item
