"""Jobs running in a pool's children: when each counts as started, its timeout, and its stop.

A child runs the first job in its pipe or, when that is an ``async def`` job run concurrently,
the concurrent jobs that follow it, up to ``async_concurrency`` of them (:class:`.handle.Child`
keeps that count). It never says when it starts one: it takes the next job the moment one ends,
and a concurrent one the moment it arrives when a slot is free. So the pool counts a job as
started when it joins the running ones, at the end of the job before it or when it was written,
whichever is later, and its timeout runs from then.

A running job is stopped, for its timeout or because the supervisor gave it up (a producer's
cancel, a lost lease, the hand-back at shutdown), in one of two ways:

* a sync job, or an async one run alone: its child is killed (TERM, then KILL after
  ``kill_grace``) and replaced; the jobs queued behind it go to other children, uncounted;
* a concurrent async job: its child is asked to cancel its asyncio task
  (:class:`~._frames.Cancel`) and answers with a ``Done`` as for any other ending, while the jobs
  beside it go on. If no answer comes within ``kill_grace`` (a task that swallows the
  cancellation, or blocks the loop), the child is killed, and the others it runs fail as crashed.

:class:`Mix` says how many jobs each child runs at once as the claims count them: one, or, as
far as the jobs lately submitted were concurrent ones, up to ``async_concurrency``; so a worker
of async tasks claims enough to fill every slot, and one of sync tasks no more than before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._frames import Cancel, frame, timeout_error
from .handle import CANCEL, Child, Work
from .prefetch import WEIGHT

if TYPE_CHECKING:
    from .pool import Pool

__all__ = ("CANCEL", "TIMEOUT", "Mix", "Running")

log = logging.getLogger(__name__)

TIMEOUT = 1  # a stop for the job's timeout: it fails (a CANCEL, the job given up, overrides it)


class Mix:
    """The share of concurrent jobs among those submitted lately, as a moving average.

    :param slots: concurrent jobs a child runs at once (``async_concurrency``).
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.share: float | None = None  # None before the first job

    def add(self, concurrent: bool) -> None:
        x = 1.0 if concurrent else 0.0
        self.share = x if self.share is None else self.share + WEIGHT * (x - self.share)

    def per_child(self) -> int:
        """Jobs a child runs at once, for the claims: 1 for sync jobs, ``slots`` for async ones
        run concurrently, in proportion between."""
        return 1 + round((self.share or 0.0) * (self.slots - 1))


class Running:
    """Starts, timeouts and stops of the jobs running in ``pool``'s children."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def start(self, works: Iterable[Work], since: float) -> None:
        """``works`` joined their child's active jobs: each started when the job before it
        ended (``since``) or when it was written, whichever is later; arm its timeout."""
        now = time.monotonic()
        for work in works:
            child = work.child
            if child is None or not work.active or work.started or work.withdraw:
                continue  # a withdrawal's answer says whether it started
            work.started_at = min(max(since, work.placed_at), now)
            if work.timeout is not None:
                self._arm(child, work, work.started_at + work.timeout - now)
            if self.pool._on_start is not None:
                self.pool._on_start(work)

    def _arm(self, child: Child, work: Work, delay: float) -> None:
        loop = asyncio.get_running_loop()
        work.timer = loop.call_later(max(delay, 0.0), self._timed_out, child, work)

    @staticmethod
    def ended(work: Work) -> None:
        """``work`` left its child (answered, given back, or the child is gone)."""
        if work.timer is not None:
            work.timer.cancel()
            work.timer = None

    def extend(self, child: Child, work: Work, seconds: float) -> None:
        """``work`` asked to run until at least ``seconds`` from now."""
        if work.timeout is None or not work.started or work.timer is None or work.stop:
            return
        now = time.monotonic()
        if work.started_at + work.timeout >= now + seconds:
            return
        work.timeout = now + seconds - work.started_at
        work.timer.cancel()
        self._arm(child, work, seconds)

    def _timed_out(self, child: Child, work: Work) -> None:
        work.timer = None
        if work.child is child and not child.dead and not work.finished:
            self.stop(child, work, TIMEOUT)
            self.pool._changed()

    def stop(self, child: Child, work: Work, why: int) -> bool:
        """Stop ``work``, which ``child`` runs, for its timeout (TIMEOUT) or because it was given
        up (CANCEL). True when it is over: its child is being killed (a given-up job then ends
        now, with None; a timed-out one fails once the child's end is seen). False for a
        concurrent job asked to stop: its ``Done`` ends it, or its child's death."""
        if not work.concurrent:
            if why == TIMEOUT:
                work.error = timeout_error(work.timeout, "its child was killed")
            self.ended(work)
            self.pool._kill(child)
            if why == CANCEL:
                work._finish(None)
            return True
        asked, work.stop = work.stop, max(work.stop, why)
        if why == TIMEOUT:
            work.error = timeout_error(work.timeout, "its child died while it was cancelled")
        if not asked:
            self.ended(work)
            child.out.append(frame(Cancel(work.seq, work.timeout if why == TIMEOUT else None)))
            child.flush()
            loop = asyncio.get_running_loop()
            work.timer = loop.call_later(self.pool.kill_grace, self._unanswered, child, work)
        return False

    def _unanswered(self, child: Child, work: Work) -> None:
        """A concurrent job did not stop within ``kill_grace`` of being asked: kill its child."""
        work.timer = None
        if work.child is not child or child.dead or work.finished:
            return
        log.warning(
            "child %d did not stop job %d (%s) within %g s of cancelling it; killing it",
            child.pid, work.seq, work.task, self.pool.kill_grace,
        )  # fmt: skip
        if work.stop == TIMEOUT:
            work.error = timeout_error(
                work.timeout, "it did not stop when cancelled, and its child was killed"
            )
        self.pool._kill(child)
        if work.stop == CANCEL:
            work._finish(None)
        self.pool._changed()
