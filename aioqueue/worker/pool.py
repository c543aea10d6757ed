"""A pool of long-lived child processes, one pipe pair each, fed by the supervisor's loop.

Unlike ``concurrent.futures.ProcessPoolExecutor``, a child that dies or times out fails only the
job it was running: it is killed (TERM, then KILL) and replaced in the background while the
others go on.

A child's pipe holds the jobs it runs (one; or up to ``async_concurrency`` ``async def`` jobs
at once, see :mod:`.running`) and those queued behind them, as many as the rule of
:mod:`.prefetch` allows; jobs that fit in no pipe wait in the pool. A queued job is taken back
by asking its child to *withdraw* it: the child confirms it will never start it, or says it
already has. So a cancel of a queued job kills no child unless the job had started; an idle
child takes over jobs queued behind a long-running one elsewhere; and when a child dies, the
jobs it was running fail while those queued behind them go to other children, uncounted. A
job's timeout runs from the moment its child starts it (children report their start and end
times).

:meth:`Pool.target` says how many jobs the children can hold, so that the supervisor claims no
more; when children can't be started ``max_start_failures`` times in a row (say a deploy broke
the task module), the pool declares itself :attr:`~Pool.broken` and hands back every job that
has not started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .. import wire
from ._concurrent import child_args
from ._frames import Done, Report, Run, Withdraw, Withdrawn, frame
from .handle import CANCEL, STEAL, Child, Frames, PoolStartError, Work, takeovers
from .limits import Limits
from .prefetch import Depth
from .running import Mix, Running
from .spawner import Spawner

__all__ = ("Pool", "PoolStartError", "Work")

log = logging.getLogger(__name__)

STEAL_AFTER = 0.002  # seconds a queued job would still wait before an idle child takes it over


class Pool:
    """``processes`` children running tasks of the queue at ``spec`` (``module:attr``).

    :param spawn: starts a background task: ``spawn(async_fn, *args)`` (a task group's
        ``start_soon``); the pool starts replacement children and closes retired ones there.
    :param on_change: called (no arguments) after :attr:`capacity` changes and after jobs
        finish, so the caller can claim more work; it must not block.
    :param on_broken: called once with :attr:`broken`'s message when the pool gives up.
    :param on_start: called with each :class:`Work` when its child starts it; must not block.
    :param max_tasks_per_child: jobs a child runs before it is replaced (None: no limit).
    :param kill_grace: seconds between TERM and KILL for a child being killed.
    :param start_timeout: seconds a child may take to import the tasks and run the queue's
        start hooks.
    :param max_start_failures: children in a row that may fail to start before the pool is
        declared broken.
    :param prefetch: jobs each child holds queued behind the one it runs; None: adaptive.
    :param limits: what children may use (:mod:`.limits`).
    :param async_concurrency: ``async def`` jobs submitted ``concurrent`` that one child runs
        at once on its event loop; 1: every job runs alone.
    """

    def __init__(
        self,
        spec: str,
        processes: int,
        *,
        spawn: Callable[..., object],
        on_change: Callable[[], None] | None = None,
        on_broken: Callable[[str], None] | None = None,
        on_start: Callable[[Work], None] | None = None,
        on_report: Callable[[Work, msgspec.Raw], None] | None = None,
        max_tasks_per_child: int | None = None,
        kill_grace: float = 1.0,
        start_timeout: float = 60.0,
        max_start_failures: int = 3,
        prefetch: int | None = None,
        limits: Limits | None = None,
        async_concurrency: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.limits = limits or Limits()
        self.processes = processes
        self.max_tasks_per_child = max_tasks_per_child
        self.kill_grace = kill_grace
        self.async_concurrency = async_concurrency
        self.spawner = Spawner(
            spec, self._frames, self._exited,
            args=[*self.limits.child_args(), *child_args(async_concurrency)], env=env,
            start_timeout=start_timeout, max_start_failures=max_start_failures,
        )  # fmt: skip
        self.depth = Depth(prefetch)
        self.mix = Mix(async_concurrency)
        self.running = Running(self)
        self.times = self.depth.times  # each task's estimated run time
        self.broken: str | None = None
        self.restarts = 0  # children started to replace one that exited, was killed or retired
        self._spawn = spawn
        self._on_change = on_change
        self._on_broken = on_broken
        self._on_start = on_start
        self._on_report = on_report
        self._seq = 0
        self._waiting: deque[Work] = deque()  # submitted, in no child's pipe
        self._live: list[Child] = []  # ready children that take jobs: the capacity
        self._children: set[Child] = set()  # every child process not yet reaped
        self._dirty: set[Child] = set()  # children with frames to write
        self._tick_handle: asyncio.Handle | None = None
        self._balance_at: asyncio.TimerHandle | None = None
        self._steals = 0  # withdrawals for an idle child, unanswered
        self._closing = False

    # -- state -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Children that can take jobs now: started, ready, not dying or retiring (0 if broken)."""
        if self.broken is not None or self._closing:
            return 0
        return len(self._live)

    @property
    def idle(self) -> int:
        """Live children that could start another job now (see :attr:`.handle.Child.free`)."""
        return sum(1 for c in self._live if c.free)

    @property
    def waiting(self) -> int:
        """Jobs held in the pool, written into no child yet."""
        return len(self._waiting)

    @property
    def queued(self) -> list[int]:
        """For each live child, the jobs queued in its pipe behind the ones it runs."""
        return [c.queued for c in self._live]

    def slots(self) -> int:
        """Jobs the live children run at once, as the claims count them (see :class:`.Mix`)."""
        return self.mix.per_child() * self.capacity

    def target(self) -> int:
        """Jobs the live children can hold now: each the ones it runs and the ones that may
        queue behind them (from the estimate over every task, or the pinned prefetch)."""
        return self.slots() + self.depth.per_child() * self.capacity

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- children --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every child and wait until each has imported the tasks and run the start hooks.

        :raises PoolStartError: if any child could not, with its error (the pool is then
            :attr:`broken`, and the children that did start are stopped).
        """
        try:
            children = await self.spawner.start(self.processes, self.kill_grace)
        except PoolStartError as exc:
            self.broken = str(exc)
            raise
        for child in children:
            self._adopt(child)
        self._changed()

    def _adopt(self, child: Child) -> None:
        child.slots = self.async_concurrency
        self._children.add(child)
        self._live.append(child)
        child.in_service = True
        self._schedule()

    def _drop(self, child: Child) -> None:
        """Take a child out of service: it takes no more jobs (capacity goes down)."""
        if child.in_service:
            child.in_service = False
            self._live.remove(child)

    def _kill(self, child: Child) -> None:
        self._drop(child)
        child.kill(self.kill_grace)

    def _replace_later(self, child: Child) -> None:
        if not child.replaced:
            child.replaced = True
            if not self._closing and self.broken is None:
                self._spawn(self._replace)

    async def _replace(self) -> None:
        try:
            child = await self.spawner.replacement(self._wanted)
        except PoolStartError as exc:
            self._break(str(exc))
            return
        if child is None:
            return
        if not self._wanted():
            await child.close(self.kill_grace)
            return
        self.restarts += 1
        self._adopt(child)
        self._changed()

    def _wanted(self) -> bool:
        """Whether children are still wanted: neither closing nor broken."""
        return not self._closing and self.broken is None

    def _break(self, message: str) -> None:
        """Give up: no more children; every job not started goes back with None (the ones
        queued in children once those confirm they never start them)."""
        if self.broken is not None:
            return
        self.broken = message
        log.error("worker pool broken: %s", message)
        self._hand_back()
        if self._on_broken is not None:
            self._on_broken(message)
        self._changed()

    def _hand_back(self) -> None:
        waiting = list(self._waiting)
        self._waiting.clear()
        for work in waiting:
            work._finish(None)
        for child in list(self._children):
            for work in list(child.jobs):
                if not work.started and not work.finished:
                    self._withdraw(work, CANCEL)

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        job: wire.ChildJob,
        timeout: float | None,
        on_done: Callable[[wire.ChildReply | None], None],
        tag: Any = None,
        concurrent: bool = False,
    ) -> Work:
        """Run ``job`` (its task with its raw msgpack arguments) in a child that starts it at
        once, or queue it in a busy one, or hold it in the pool until a child can take it.

        ``on_done`` is called once: with the child's reply (``kind`` "timeout", "memory" or
        "crashed" when its child was killed or died), or with None when the job never ran to
        an end here (cancelled, or handed back by a broken or closing pool). ``tag`` is kept on the
        :class:`Work` for ``on_start``. A ``concurrent`` job (an ``async def`` task's) runs
        beside others of its kind, up to ``async_concurrency`` in a child.
        """
        concurrent = concurrent and self.async_concurrency > 1
        self._seq += 1
        data = frame(Run(self._seq, job, concurrent))
        work = Work(self._seq, job.task, data, timeout, on_done, tag, concurrent)
        if self.broken is not None or self._closing:
            asyncio.get_running_loop().call_soon(work._finish, None)
            return work
        self.mix.add(concurrent)
        if not self._waiting:
            child = self._best(work)
            if child is not None and child.starts(work):
                self._place(child, work)
                return work
        self._waiting.append(work)
        self._schedule()
        return work

    def cancel(self, work: Work) -> None:
        """Give up a job. One held in the pool, or started by a child, ends now with
        ``on_done(None)`` (a started one's child is killed, and replaced), except a concurrent
        one: it ends when its child answers the stop (:mod:`.running`); one queued in a child
        is withdrawn: ``on_done(None)`` comes when the child confirms it never started it, or,
        if it had, once it is stopped as a started one is."""
        if work.finished:
            return
        child = work.child
        if child is None:
            if work in self._waiting:
                self._waiting.remove(work)
            work._finish(None)
        elif child.dead:
            work._finish(None)  # its child's end hands the others on
        elif work.started or (work.withdraw == CANCEL and work.active):
            # running, or among the jobs its child runs with the child not answering
            if not self.running.stop(child, work, CANCEL):
                return
        else:
            self._withdraw(work, CANCEL)
            return
        self._changed()

    def _withdraw(self, work: Work, why: int) -> None:
        """Ask ``work``'s child to give it back (``why``: STEAL or CANCEL; a CANCEL overrides a
        STEAL on its way)."""
        child = work.child
        assert child is not None
        pending = self._set_withdraw(work, max(work.withdraw, why))
        if not pending and not child.dead:
            child.out.append(frame(Withdraw(work.seq)))
            child.flush()

    def _set_withdraw(self, work: Work, why: int) -> int:
        """Set the withdrawal on its way for ``work`` (0: none); the one it replaces."""
        old, work.withdraw = work.withdraw, why
        self._steals += (why == STEAL) - (old == STEAL)
        return old

    def _place(self, child: Child, work: Work) -> None:
        work.estimate = self.times.get(work.task) or 0.0
        work.started_at = 0.0
        work.stop, work.error = 0, None
        starts = child.add(work, time.monotonic())
        self._dirty.add(child)
        self._schedule()
        if starts:
            self.running.start((work,), work.placed_at)
            if len(child.jobs) == 1:  # an idle child: no reason to wait for more
                child.flush()

    def _schedule(self) -> None:
        """Fill the children and write to them once the current callbacks are done."""
        if self._tick_handle is None:
            self._tick_handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        self._fill()
        self._balance()
        dirty, self._dirty = self._dirty, set()
        for child in dirty:
            child.flush()

    def _fill(self) -> None:
        """Write waiting jobs, in order, into the children that may take them."""
        while self._waiting and self._live:
            work = self._waiting[0]
            child = self._best(work)
            if child is None:
                return
            self._waiting.popleft()
            self._place(child, work)

    def _best(self, work: Work) -> Child | None:
        """An idle child, else one that starts ``work`` at once (running the fewest), else the
        one with the least queued work that may queue it."""
        estimate = self.times.get(work.task)
        starts: Child | None = None
        best: Child | None = None
        least = (float("inf"), 0)
        for child in self._live:
            if not child.room(self.max_tasks_per_child):
                continue
            if not child.jobs:
                return child
            if child.starts(work):
                if starts is None or child.active < starts.active:
                    starts = child
                continue
            load = (child.queued_s, child.queued)
            if load < least and self.depth.fits(child.queued, load[0], estimate):
                best, least = child, load
        return starts or best

    def _balance(self) -> None:
        """Let idle children take over jobs queued behind long-running ones elsewhere."""
        if self._waiting or self._closing or self.broken is not None:
            return
        idle = sum(1 for c in self._live if not c.jobs and c.room(self.max_tasks_per_child))
        if idle <= self._steals:
            return  # no child to take one over (the usual case: every child busy)
        now = time.monotonic()
        taken, recheck = takeovers(self._live, idle - self._steals, now, STEAL_AFTER)
        for work in taken:
            self._withdraw(work, STEAL)
        if recheck < float("inf") and self._balance_at is None:
            delay = max(recheck - now, 0.0) + 0.001
            self._balance_at = asyncio.get_running_loop().call_later(delay, self._rebalance)

    def _rebalance(self) -> None:
        self._balance_at = None
        self._schedule()

    # -- what children say -----------------------------------------------------------------

    def _frames(self, child: Child, frames: Frames) -> None:
        for msg in frames:
            if child.dead:
                return  # killed: whatever it still says is dropped; its end deals with its jobs
            if isinstance(msg, Done):
                self._done(child, msg)
            elif isinstance(msg, Withdrawn):
                self._withdrawn(child, msg.seq, msg.ok)
            elif (work := child.seqs.get(msg.seq)) is not None and work.active:
                if isinstance(msg, Report):
                    if self._on_report is not None:
                        self._on_report(work, msg.progress)
                else:
                    self.running.extend(child, work, msg.seconds)
        self._schedule()
        self._changed()

    def _done(self, child: Child, msg: Done) -> None:
        work = child.seqs.get(msg.seq)
        if work is None or not work.active:
            child.fail(f"answered job {msg.seq} out of turn")
            return
        self.running.ended(work)
        joined = child.remove(work)
        child.done += 1
        child.last_end = msg.ended
        self._set_withdraw(work, 0)  # a withdrawal on its way came too late: it ran
        if not work.started and self._on_start is not None:
            self._on_start(work)
        work.started_at = msg.started
        work.run_s = max(msg.ended - msg.started, 0.0)
        self.times.add(work.task, work.run_s)
        self.limits.after_job(child)  # over max_memory_per_child: it runs what it holds, no more
        if child.spent(self.max_tasks_per_child):
            self._drop(child)
            self._spawn(child.close, self.kill_grace)
            self._replace_later(child)
        else:
            self.running.start(joined, msg.ended)
        given_up = work.stop == CANCEL and not msg.reply.ok  # stopped as asked
        work._finish(None if given_up else msg.reply)

    def _withdrawn(self, child: Child, seq: int, ok: bool) -> None:
        work = child.seqs.get(seq)
        if work is None:
            return  # answered already: its Done came first
        why = self._set_withdraw(work, 0)
        if ok:
            self.running.ended(work)
            joined = child.remove(work)
            if why == CANCEL or self._closing or self.broken is not None:
                work._finish(None)
            else:
                self._waiting.appendleft(work)
            self.running.start(joined, child.last_end)
            return
        self.running.start((work,), child.last_end)  # it is running where it was
        if why == CANCEL:
            self.running.stop(child, work, CANCEL)

    def _exited(self, child: Child) -> None:
        """A child is gone: fail the jobs it was running, and pass on the ones queued in it."""
        if child not in self._children:
            return  # it never took jobs: it failed to start, or the pool never adopted it
        self._drop(child)
        self._children.discard(child)
        self._dirty.discard(child)
        clean = child.input_closed and child.returncode == 0  # it ran all it had and left
        back: list[Work] = []
        for work in child.clear():
            work.child = None
            self.running.ended(work)
            why = max(self._set_withdraw(work, 0), work.stop)
            active, work.active = work.active, False
            if work.finished:
                continue
            if why == CANCEL:
                work._finish(None)
            elif active and not clean:
                self._failed(child, work)
            elif self._closing or self.broken is not None:
                work._finish(None)
            else:
                back.append(work)
        self._waiting.extendleft(reversed(back))
        self._replace_later(child)
        self._schedule()
        self._changed()

    def _failed(self, child: Child, work: Work) -> None:
        if work.started:
            work.run_s = time.monotonic() - work.started_at
            self.times.add(work.task, work.run_s)
        work._finish(wire.ChildReply(ok=False, error=work.error or child.failure()))

    async def close(self, *, kill: bool = False) -> None:
        """Stop every child; jobs not started get ``on_done(None)``.

        :param kill: kill the children now (their jobs get ``on_done(None)``); else close their
            input, so that each finishes the jobs it runs (the replies are delivered) and exits.
        """
        self._closing = True
        if self._balance_at is not None:
            self._balance_at.cancel()
        waiting = list(self._waiting)
        self._waiting.clear()
        for work in waiting:
            work._finish(None)
        children = list(self._children)
        for child in children:
            self._drop(child)
            for work in list(child.jobs):
                if kill:
                    work._finish(None)
                elif not work.started and not work.finished:
                    self._withdraw(work, CANCEL)  # answered before the child sees its end
            if kill and not child.dead:
                child.kill(self.kill_grace)
        await asyncio.gather(*(c.close(self.kill_grace) for c in children), return_exceptions=True)
        self._changed()
