"""A queue with a schedule, for tests/test_schedule.py's workers (other workers serve
tests/tasks.py, whose queue has no schedule)."""

from __future__ import annotations

from aioqueue import Queue

queue = Queue("sched")

PERIOD = 0.3  # seconds between ticks


@queue.task
def tick() -> None:
    """Submitted by the workers at each tick."""


# "all": a tick missed on a busy machine is caught up, so every tick of the test is submitted
queue.schedule(tick, every=PERIOD, misfire="all")
