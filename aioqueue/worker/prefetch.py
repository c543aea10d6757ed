"""How many jobs wait for each child: queued in its pipe, or held ready in the worker.

A child that finishes a job and has nothing queued waits a round trip (its reply to the
supervisor, the supervisor's next job, and, when the worker holds none, a claim from Redis)
with its core idle. A job queued in a child, on the other hand, is one that another child or
another worker could have started, and it starts late when the job ahead of it runs long.

So by default the worker learns each task's run time, a moving estimate per task name from the
times its children report, and keeps just enough work ahead of each child to hide a round trip:

* in the child's pipe, jobs adding up to at most :data:`BUDGET` seconds of estimated work (up
  to :data:`MAX_DEPTH` of them), and at least one for tasks shorter than :data:`SHORT`, so that
  short jobs run back to back with no hop at all;
* claimed ahead, for tasks shorter than :data:`SHORT`, as many jobs per child as fit in the
  budget and at least one, so that a child never waits on Redis.

No-op tasks get deep queues, a 20 ms task one job queued behind the running one, a 2 s task
nothing ahead at all, and a task not seen yet is queued behind nothing until its first run
gives an estimate. ``--prefetch N`` pins the depth at N per child, in the pipe, whatever the
tasks' run times.

One job in the pipe rather than held in the worker, for a 20 ms task: a held job waits for its
child's reply to reach the supervisor and the next job to reach the child's main thread, about
1 ms of the child's core per job on a 2-core machine, 5% of a 20 ms job. A job queued in a pipe
is no more stuck than a held one: a child left idle takes it over (:func:`.handle.takeovers`),
and a cancel or a hand-back withdraws it.
"""

from __future__ import annotations

import math

__all__ = ("BUDGET", "MAX_DEPTH", "SHORT", "Depth", "RunTimes")

BUDGET = 0.005  # seconds of estimated work queued in a child behind its running job
SHORT = 0.1  # tasks estimated shorter than this get at least one job claimed ahead per child
MAX_DEPTH = 64  # jobs queued in one child, however short they are
WEIGHT = 0.2  # of the newest run time in a task's moving estimate


class RunTimes:
    """Moving estimates of run time (seconds): one per task name, and one over every job."""

    def __init__(self) -> None:
        self._tasks: dict[str, float] = {}
        self.overall: float | None = None  # over the jobs of every task, as they come

    def get(self, task: str) -> float | None:
        """The task's estimate; None before one of its jobs has ended."""
        return self._tasks.get(task)

    def add(self, task: str, seconds: float) -> None:
        """A job of ``task`` ran ``seconds`` (or was stopped after that long)."""
        seconds = max(seconds, 0.0)
        old = self._tasks.get(task)
        self._tasks[task] = seconds if old is None else old + WEIGHT * (seconds - old)
        mix = self.overall
        self.overall = seconds if mix is None else mix + WEIGHT * (seconds - mix)


class Depth:
    """The rule for queuing jobs in children: adaptive (``pinned`` None) or N per child.

    :param pinned: jobs each child holds behind its running one, whatever their run time.
    """

    def __init__(self, pinned: int | None = None, times: RunTimes | None = None) -> None:
        self.pinned = pinned
        self.times = times or RunTimes()

    def per_child(self) -> int:
        """Jobs to hold for each child beyond the one it runs, for the fetch loop's claims:
        from the estimate over every task, as the next jobs' tasks are not known before they
        are claimed. Those that fit in no pipe wait in the worker."""
        if self.pinned is not None:
            return self.pinned
        return self._depth(self.times.overall)

    @staticmethod
    def _depth(estimate: float | None) -> int:
        if estimate is None or estimate >= SHORT:
            return 0
        if estimate <= 0:
            return MAX_DEPTH
        return max(1, min(MAX_DEPTH, math.floor(BUDGET / estimate)))

    def fits(self, queued: int, queued_s: float, estimate: float | None) -> bool:
        """May a job of ``estimate`` seconds wait in the pipe of a child that has ``queued``
        jobs (``queued_s`` seconds of estimated work) behind its running one?"""
        if self.pinned is not None:
            return queued < self.pinned
        if estimate is None or queued >= MAX_DEPTH:
            return False
        return queued_s + estimate <= BUDGET or (queued == 0 and estimate < SHORT)
