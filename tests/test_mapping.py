"""``queue.map``: results as they complete, inputs read lazily within the window, failures
raised or yielded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import aioqueue
from aioqueue import Call, Queue
from tests import tasks
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio


async def test_map_yields_every_result_within_its_window(
    queue: Queue, start_worker: StartWorker
) -> None:
    """60 inputs through a window of 4: every result comes back once, and the inputs are never
    read more than 4 ahead of the results yielded (memory bounded, the producer held back)."""
    await start_worker()
    pulled = 0

    def inputs() -> Iterator[Call]:
        nonlocal pulled
        for i in range(60):
            pulled += 1
            yield Call(i, i)

    seen: list[int] = []
    async for result in queue.map(tasks.add, inputs(), window=4):
        seen.append(result)
        assert pulled <= len(seen) + 4
    assert sorted(seen) == [2 * i for i in range(60)]


async def test_map_failures_raise_or_are_yielded(queue: Queue, start_worker: StartWorker) -> None:
    await start_worker()
    with pytest.raises(aioqueue.JobFailed, match="ValueError: no"):
        async for _ in queue.options(retries=0).map(tasks.fail, ["no"] * 3, window=2):
            pass
    got = [r async for r in queue.options(retries=0).map(tasks.fail, ["x", "y"],
                                                           return_exceptions=True)]  # fmt: skip
    assert sorted(type(r).__name__ for r in got) == ["JobFailed", "JobFailed"]
    with pytest.raises(aioqueue.InvalidOptions, match="window must be an int >= 1, got 0"):
        async for _ in queue.map(tasks.noop, [], window=0):
            pass
