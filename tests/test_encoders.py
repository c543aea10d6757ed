"""Types msgpack can't carry: registered with ``aioqueue.register_type``, they travel as
arguments and results and arrive as their annotated type; unregistered, the error says how."""

from __future__ import annotations

from fractions import Fraction

import pytest

import aioqueue
from aioqueue import Queue
from tests import tasks
from tests.conftest import StartWorker

pytestmark = pytest.mark.anyio


async def test_registered_types_and_sets_round_trip_through_a_worker(
    queue: Queue, start_worker: StartWorker
) -> None:
    """A Fraction (registered in tests/tasks.py) and sets (annotated) reach the task as those
    types and come back as the annotated return type; unannotated, the encoded form travels."""
    await start_worker()
    half = await queue.submit(tasks.halve, Fraction(1, 3))
    union = await queue.submit(tasks.union, {1, 2}, {2, 3})
    raw = await queue.submit(tasks.echo, Fraction(2, 5))
    assert await half.result(timeout=20) == Fraction(1, 6)
    result = await union.result(timeout=20)
    assert result == {1, 2, 3} and isinstance(result, set)
    assert await raw.result(timeout=20) == [2, 5]


async def test_an_unregistered_type_names_the_argument_and_the_cure(queue: Queue) -> None:
    """Nothing is written; the error names the parameter, the type and register_type."""
    with pytest.raises(aioqueue.SerializationError) as caught:
        await queue.submit(tasks.echo, 1 + 2j)
    text = str(caught.value)
    assert "argument 'value' of type complex can't be encoded" in text
    assert "aioqueue.register_type(complex, encode=..., decode=...)" in text
    assert (await queue.info()).pending == 0
