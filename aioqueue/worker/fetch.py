"""The fetch loop: claims as many jobs as live children can hold, and blocks between claims.

No sleep-and-poll: between claims the loop blocks on the queue's wake-up list (bounded by
``block_timeout``), and only the last 100 ms before a delayed job is due are waited out here,
because Redis ends blocking waits on its own 100 ms clock (hz 10).

A paused queue (``Queue.pause()``) is seen in the reply of the claim the loop sends anyway: it
leases nothing and leaves no wake-up token, and the loop blocks on the wake list as when idle,
until ``Queue.resume()`` pushes a token that ends the wait at once.

A claim whose reply was lost is re-sent as is, under the same receipt, before anything else: it
then returns the jobs it leased the first time instead of popping others, so no job sits leased
to a worker that never heard of it.

A claim that got fewer jobs than it asked for emptied the queue: the next claim then waits on
the wake-up list (a job submitted since left a token there) rather than run at once, so that on
a quiet queue a job costs one claim and one finish, not an extra empty claim. The wait and the
claim go in one write on the loop's held connection, the blocking pop first: Redis runs the
claim the moment the pop returns, and the worker wakes once, to the claim's jobs, instead of
once for the token and again for the jobs. Such a claim carries no outcomes (they would wait
as long as the pop does): the finisher writes those.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from .._link import Link, pack
from .._redis import call_redis
from ..scripts import ClaimReply, Receipt
from .backoff import Backoff
from .finisher import Pending

if TYPE_CHECKING:
    from .supervisor import Worker

__all__ = ("Fetcher",)

log = logging.getLogger("aioqueue.worker")

BLOCK_RESOLUTION = 0.1  # seconds: how late Redis may end a blocking wait (1 / its default hz)


@dataclass(eq=False, slots=True)
class _Claim:
    """A claim sent and not answered yet, with the outcomes that travel with it."""

    receipt: Receipt
    k: int
    outcomes: list[Pending]
    wait: float | None = None  # seconds to block on the wake-up list first, in the same write


class Fetcher:
    """Claims jobs for one worker and hands them to it."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.unanswered: _Claim | None = None
        self.paused = False  # the last claim found the queue paused
        self.link = Link.of(worker.redis)  # its own connection, held: claims and waits

    def _free(self) -> int:
        """Jobs to claim now: what the children can hold (the jobs each runs, see running.py,
        and the ones that may queue behind them, see prefetch.py), less what is held. Jobs
        queued ahead are refilled in batches: claimed again once half of them are used up, or
        at once when a child could start one."""
        w, pool = self.w, self.w.pool
        if not w.capacity() or pool is None:
            return 0
        target = pool.target()
        free = target - w.running
        if free <= 0:
            return 0
        return free if 2 * free >= target - pool.slots() or pool.idle else 0

    async def _send(self) -> ClaimReply:
        """Send the unanswered claim (re-sent as is until Redis answers it)."""
        w, c = self.w, self.unanswered
        assert c is not None
        before = None if c.wait is None else pack("BLPOP", w.keys.wake, c.wait)
        c.wait = None  # sent: if it must be sent again, the claim goes at once
        items = [p.item for p in c.outcomes]
        replies, claim = await w.scripts.claim(
            c.k, w.lease_ms, w.id, c.receipt, items, w.dead, self.link, before
        )
        self.unanswered = None
        w.finisher.settle(c.outcomes, replies)
        return claim

    def _new_claim(self, k: int, wait: float | None) -> None:
        w = self.w
        outcomes = w.finisher.take() if wait is None else []
        self.unanswered = _Claim(w.fetch_channel.next(k), k, outcomes, wait)

    async def run(self) -> None:
        w, s = self.w, self.w.settings
        backoff = Backoff(cap=1.0)  # resume within about a second of Redis coming back
        wait: float | None = None  # the next claim waits on the wake-up list this long first
        while not w.stopping.is_set():
            if self.unanswered is None:
                free = self._free()
                if free <= 0:
                    await w.wait_change()
                    continue
                self._new_claim(free, wait)
                wait = None
            asked = self.unanswered.k if self.unanswered is not None else 0
            try:
                claim = await self._send()
                w.outage.ok()
                backoff.reset()
                self._took(claim)
                self._note_pause(claim.paused)
                if len(claim.jobs) + claim.stale >= asked:
                    continue  # there may be more
                if claim.jobs:  # the queue is empty now; a job submitted since left a token
                    wait = await self._block(claim.next_due_ms)
                    continue
                if s.burst and not w.running and await w.queue_empty():
                    log.info("burst: queue empty, stopping")
                    w.stopping.set()
                    return
                # paused: due jobs wait anyway, so only a resume (or the timeout) ends the wait
                wait = await self._block(-1 if claim.paused else claim.next_due_ms)
            except Exception as exc:
                w.outage.failed("fetching jobs", exc)
                await backoff.sleep()

    def _note_pause(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            if paused:
                log.info(
                    "queue %s is paused: claiming nothing until it is resumed", self.w.queue.name
                )
            else:
                log.info("queue %s resumed: claiming again", self.w.queue.name)

    def _took(self, claim: ClaimReply) -> None:
        w = self.w
        if claim.stale:
            w.counters["stale"] += claim.stale
            log.warning(
                "skipped %d stale queue entries (job finished or held elsewhere)", claim.stale
            )
        for held in [w.adopt(job) for job in claim.jobs]:
            w.start(held)

    async def _block(self, next_due_ms: int) -> float | None:
        """Wait before the next claim: until the next delayed job is due, if it is within
        Redis's resolution; else return how long the claim is to wait on the wake-up list (or,
        with no held connection, wait on it here)."""
        w = self.w
        timeout = w.settings.block_timeout
        if next_due_ms >= 0:
            due = next_due_ms / 1000
            if due <= BLOCK_RESOLUTION:
                await anyio.sleep(due)
                return None
            timeout = min(timeout, due - BLOCK_RESOLUTION)
        timeout = max(timeout, 0.01)
        if self.link is not None:
            return timeout
        await call_redis(w.redis.blpop([w.keys.wake], timeout=timeout), w.queue.redis_url)
        return None

    async def settle(self, timeout: float) -> None:
        """On the way out: get the answer to a claim cut short, and hand its jobs back."""
        if self.unanswered is None:
            return
        w = self.w
        backoff = Backoff(cap=1.0)
        with anyio.move_on_after(timeout):
            while True:
                try:
                    claim = await self._send()
                    break
                except Exception as exc:
                    w.outage.failed("settling the last claim", exc)
                    await backoff.sleep()
        if self.unanswered is not None:
            log.warning("the last claim got no answer; its jobs return when their lease expires")
            return
        for job in claim.jobs:
            held = w.adopt(job)
            w.job_done(held, w.outcomes.release(held))
