"""The worker's log lines: completed jobs' lines in batches, in order, at their own time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from aioqueue.script_values import LeasedJob
from aioqueue.wire import Envelope
from aioqueue.worker._state import Held
from aioqueue.worker.logs import BATCH_S, Completions

pytestmark = pytest.mark.anyio


class _Lines(logging.Handler):
    """Keeps the records it is given; ``arrived`` is set by each."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, _Lines]]:
    logger = logging.getLogger("tests.completions")
    handler = _Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def _held(job_id: str, run_s: float) -> Held:
    held = Held(LeasedJob(job_id, "token", 1, b""))
    held.env = Envelope(v=1, id=job_id, task="tests.tasks.add")
    held.run_s = run_s
    return held


async def test_lines_wait_for_their_batch_and_keep_their_time(
    lines: tuple[logging.Logger, _Lines],
) -> None:
    """A completed job's line is logged within BATCH_S, stamped with when it completed, with
    the job's fields; nothing is logged before the batch is due."""
    logger, handler = lines
    with Completions(logger, "w1") as completions:
        before = time.time()
        completions.add(_held("a", 0.25))
        completions.add(_held("b", 0.5))
        after = time.time()
        assert handler.records == []
        await asyncio.wait_for(handler.arrived.wait(), BATCH_S * 100)
    a, b = handler.records
    assert a.getMessage() == "  0.25s ✓ tests.tasks.add job a"
    assert b.getMessage() == "  0.50s ✓ tests.tasks.add job b"
    assert before <= a.created <= b.created <= after
    assert a.msecs == int((a.created % 1) * 1000)
    assert a.levelno == logging.INFO
    assert (a.event, a.job_id, a.task, a.attempt, a.worker, a.duration_s) == (  # type: ignore[attr-defined]
        "completed", "a", "tests.tasks.add", 1, "w1", 0.25
    )  # fmt: skip


async def test_another_line_logs_the_waiting_ones_first(
    lines: tuple[logging.Logger, _Lines],
) -> None:
    """A line logged while completed jobs' lines wait comes after them; leaving the context
    logs what still waits, and the logger is left without the filter."""
    logger, handler = lines
    with Completions(logger, "w1") as completions:
        completions.add(_held("a", 0.0))
        logger.warning("job b: failed")
        completions.add(_held("c", 0.0))
    messages = [r.getMessage() for r in handler.records]
    assert messages == ["  0.00s ✓ tests.tasks.add job a", "job b: failed",
                        "  0.00s ✓ tests.tasks.add job c"]  # fmt: skip
    assert completions not in logger.filters


async def test_nothing_is_kept_when_info_is_not_logged(
    lines: tuple[logging.Logger, _Lines],
) -> None:
    logger, handler = lines
    logger.setLevel(logging.WARNING)
    with Completions(logger, "w1") as completions:
        completions.add(_held("a", 0.0))
    assert handler.records == []
