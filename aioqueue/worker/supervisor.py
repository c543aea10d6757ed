"""The worker supervisor: one event loop does all Redis work while children run the tasks.

One anyio task group runs the fetch loop (fetch.py), the finisher (finisher.py), heartbeats and
recovery (leases.py), and, with a metrics port, the HTTP server of metrics and health
(metrics.py, http.py); the pool (pool.py) calls back when a child replies. This module holds the
worker's lifecycle (start, signals, graceful drain) and the path of one job: claimed, checked,
run, and its outcome queued for the finisher.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
import time
from typing import Any

import anyio
import anyio.abc
import msgspec
from redis.exceptions import NoPermissionError

from .. import tracing, wire
from .._redis import to_str as _str
from .._text import count
from ..keys import REGISTRY
from ..queue import Queue
from ..scripts import FinishItem, LeasedJob, Scripts
from ..urls import safe_url
from ._frames import URL_ENV
from ._state import Change, Channel, Held, Outage
from .after import with_parents
from .fetch import Fetcher
from .finisher import Finisher, Pending
from .http import StatusServer
from .leases import heartbeat_loop, recovery_loop
from .limits import Limits
from .logs import Completions, job_fields
from .metrics import Metrics
from .outcomes import Outcomes
from .pool import Pool, Work
from .progress import ProgressWriter
from .schedules import schedule_loop
from .settings import WorkerSettings

__all__ = ("Worker", "WorkerFailed")

log = logging.getLogger("aioqueue.worker")

RECEIPT_MS = 3_600_000  # how long the finish and recovery channels keep their last reply


class WorkerFailed(RuntimeError):
    """Raised by :meth:`Worker.run` when the worker had to stop: its children can't start."""


class Worker:
    """A supervisor for the queue at ``spec`` (``module:attr``), with its pool of children."""

    def __init__(self, queue: Queue, spec: str, settings: WorkerSettings | None = None) -> None:
        self.queue = queue
        self.spec = spec
        self.settings = s = settings or WorkerSettings()
        s.validate()
        self.id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.started_ms = int(time.time() * 1000)
        self.keys = k = queue.keys
        self.lease_ms = int(s.lease * 1000)
        self.dead = (int(queue.dead_ttl * 1000), queue.max_dead)
        self.redis = queue._make_client(socket_timeout=s.block_timeout + 5.0, retries=1)
        self.scripts = Scripts(self.redis, k, queue.redis_url)
        self.outage = Outage(safe_url(queue.redis_url))
        self.outcomes = Outcomes(queue, s, self.id)
        self.fetch_channel = Channel(k, self.id, "fetch", max(60_000, 10 * self.lease_ms))
        self.beat_channel = Channel(k, self.id, "beat", max(60_000, 10 * self.lease_ms))
        self.reap_channel = Channel(k, self.id, "reap", RECEIPT_MS)
        self.reports = ProgressWriter(self.scripts, self.outage)
        self.finisher = Finisher(
            self.scripts, Channel(k, self.id, "finish", RECEIPT_MS), self.dead, self.outage,
            self._finished, self.reports,
        )  # fmt: skip
        self.fetcher = Fetcher(self)
        self.pool: Pool | None = None
        self.held: dict[str, Held] = {}  # every job we hold a lease on, until its finish lands
        self.running = 0  # jobs between claim and the child's reply
        self.counters: dict[str, int] = {
            "claimed": 0, "completed": 0, "retried": 0, "dead": 0, "released": 0,
            "snoozed": 0, "cancelled": 0, "fenced": 0, "lost": 0, "recovered": 0, "stale": 0,
            "lease_lost": 0,
        }  # fmt: skip
        self.cancelling: set[str] = set()  # held jobs whose cancel was asked, being stopped
        self.metrics = Metrics(self)
        self.completions = Completions(log, self.id)
        self.beat_at: float | None = None  # time.monotonic() of the last answered heartbeat
        self.beat_error: str | None = None  # why the last heartbeat failed, if it did
        self.failure: str | None = None
        self._concurrent: dict[str, bool] = {}  # per task: does it run beside others?
        self._changed = Change()  # a job ended or the pool's capacity changed
        self._idle = anyio.Event()
        self.stopping = anyio.Event()
        self._hard_stop = anyio.Event()
        self._fetch_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.spans = tracing.run_spans(queue.name)  # None unless OpenTelemetry is loaded
        self.limits = Limits(
            cpu_limit=s.cpu_limit, memory_limit=s.memory_limit,
            max_memory_per_child=s.max_memory_per_child,
        )  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until the queue is drained (burst) or a signal arrives; then drain and return.

        :raises WorkerFailed: the children could not be started (the task module does not
            import, say); every job this worker held was handed back first.
        """
        s = self.settings
        log.info(
            "worker %s: queue %r on %s, %d processes, async concurrency %d, pid %d",
            self.id, self.queue.name, self.outage.url, s.processes, s.async_concurrency,
            os.getpid(),
        )  # fmt: skip
        listener = None
        if s.metrics_port is not None:
            where = f"{s.metrics_host}:{s.metrics_port}"
            try:
                listener = await anyio.create_tcp_listener(
                    local_host=s.metrics_host, local_port=s.metrics_port
                )
            except OSError as exc:
                await self.redis.aclose()
                log.error("can't serve metrics on %s: %s", where, exc)
                raise WorkerFailed(f"can't serve metrics on {where}: {exc}") from None
            self.metrics.add_process_metrics()
            log.info("metrics and health on http://%s/metrics, /health/live, /health/ready", where)
        async with anyio.create_task_group() as tg:
            if listener is not None:
                tg.start_soon(StatusServer(self, self.metrics, listener).serve)
            self.pool = Pool(
                self.spec,
                s.processes,
                spawn=tg.start_soon,
                max_tasks_per_child=s.max_tasks_per_child,
                kill_grace=s.kill_grace,
                start_timeout=s.start_timeout,
                max_start_failures=s.max_start_failures,
                prefetch=s.prefetch or None,
                limits=self.limits,
                async_concurrency=s.async_concurrency,
                env={URL_ENV: self.queue.redis_url},
                on_change=self._notify,
                on_broken=self._broken,
                on_start=self._started,
                on_report=lambda work, report: self.reports.put(work.tag, bytes(report)),
            )
            tg.start_soon(self.limits.watch, self.pool)  # with a memory_limit
            if s.handle_signals:
                tg.start_soon(self._signals)
            try:
                await self.pool.start()
            except Exception as exc:  # nothing was claimed yet: just stop
                log.error("children can't start: %s", exc)
                self.failure = str(exc)
            else:
                await self._serve(tg)
            tg.cancel_scope.cancel()
        if listener is not None:
            await listener.aclose()
        await self.redis.aclose()
        log.info("worker %s stopped: %s", self.id, self.counters)
        if self.failure is not None:
            raise WorkerFailed(self.failure)

    async def _serve(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        if not await self._check_redis():
            return
        tg.start_soon(heartbeat_loop, self)
        tg.start_soon(recovery_loop, self)
        tg.start_soon(schedule_loop, self)
        tg.start_soon(self.finisher.run)
        tg.start_soon(self.reports.run)
        with self.completions:
            with anyio.CancelScope() as self._fetch_scope:
                await self.fetcher.run()
            await self._drain()

    def stop(self) -> None:
        """Stop taking jobs; running ones get the grace period (as on SIGTERM)."""
        self.stopping.set()
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        self._notify()

    def stop_now(self) -> None:
        """Hand every running job back at once (as on a second signal)."""
        self.stop()
        self._hard_stop.set()

    def _broken(self, message: str) -> None:
        log.error("children can't start; handing jobs back and exiting: %s", message)
        self.failure = message
        self.stop()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self.stopping.is_set():
                    log.info(
                        "%s: no new jobs; waiting up to %gs for %d running",
                        name, self.settings.grace, self.running,
                    )  # fmt: skip
                    self.stop()
                else:
                    log.info("%s again: handing running jobs back now", name)
                    self.stop_now()

    async def _drain(self) -> None:
        assert self.pool is not None
        s = self.settings
        for held in list(self.held.values()):  # claimed ahead and not started: back at once
            if held.work is not None and not held.work.started:
                self.pool.cancel(held.work)
        await self.fetcher.settle(max(5.0, s.lease))
        with anyio.move_on_after(s.grace) as grace:
            async with anyio.create_task_group() as tg:

                async def hard() -> None:
                    await self._hard_stop.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(hard)
                await self._wait_idle()
                tg.cancel_scope.cancel()
        if self.running:
            why = "grace period ran out" if grace.cancelled_caught else "second signal"
            log.warning("%s: handing back %s", why, count(self.running, "running job"))
        for held in list(self.held.values()):
            if held.work is not None and not held.work.finished:
                self.pool.cancel(held.work)
        await self._wait_idle()
        with anyio.move_on_after(max(5.0, s.lease)):
            await self.finisher.flush()
        if self.finisher.queue or self.finisher.taken:
            log.warning("%d outcomes could not be written before exit", len(self.finisher.queue))
        with anyio.CancelScope(shield=True):  # every job is answered or handed back by now:
            await self.pool.close()  # close the children's input, so their stop hooks run
        try:
            with anyio.move_on_after(2.0):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(self.keys.workers, self.id)
                    pipe.hdel(self.keys.worker_info, self.id)
                    await pipe.execute()
        except Exception:  # best effort on the way out
            pass

    async def _wait_idle(self) -> None:
        while self.running:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def _check_redis(self) -> bool:
        """At start: put the queue in the registry of queues (best effort: an ACL user may lack
        the right, Redis may be down), refuse to serve as a user that may not publish finished
        jobs (False: :attr:`failure` says why), and warn when Redis may evict the queue's keys.
        """
        try:
            await self.redis.sadd(REGISTRY, self.queue.name)
        except Exception as exc:
            log.debug("queue %r not added to the registry: %s", self.queue.name, exc)
        channel = self.keys.done_channel
        try:  # an empty message: waiters ignore it
            await self.redis.publish(channel, b"")
        except NoPermissionError as exc:  # the finish script would fail after its writes
            self.failure = (
                f"this Redis user may not PUBLISH to {channel}, where workers announce finished "
                f"jobs: allow it (ACL rule &{channel}) ({exc})"
            )
            log.error("%s", self.failure)
            return False
        except Exception:  # Redis down: the loops retry
            pass
        try:
            policy = await self.redis.config_get("maxmemory-policy")
        except Exception:  # CONFIG may be denied by ACL, or Redis may be down; then we can't tell
            return True
        items: dict[Any, Any] = dict(policy)
        value = {_str(k): _str(v) for k, v in items.items()}.get("maxmemory-policy")
        if value != "noeviction":
            log.warning(
                "Redis maxmemory-policy is %r: Redis may evict queue keys and lose jobs; "
                "set it to noeviction",
                value,
            )
        return True

    # -- capacity --------------------------------------------------------------------------

    def capacity(self) -> int:
        """Jobs that live children can run now (0 while none is up, or once stopping)."""
        if self.pool is None or self.stopping.is_set():
            return 0
        return self.pool.capacity

    def _notify(self) -> None:
        self._changed.fire()

    async def wait_change(self) -> None:
        """Wait until a job ends or the pool's capacity changes."""
        await self._changed.wait()

    async def queue_empty(self) -> bool:
        info = await self.scripts.info()
        return info.pending + info.scheduled + info.running == 0

    # -- one job ---------------------------------------------------------------------------

    def adopt(self, job: LeasedJob) -> Held:
        """Register a job just claimed (it counts as running until its outcome is queued)."""
        held = self.held[job.id] = Held(job)
        self.running += 1
        self.counters["claimed"] += 1
        return held

    def start(self, held: Held) -> None:
        """Check a claimed job and hand it to the pool, or dead-letter it at once."""
        q, job = self.queue, held.job
        if len(job.data) > q.max_payload:
            size = f"job payload is {len(job.data):,} bytes, over max_payload {q.max_payload:,}"
            self.job_done(held, self.outcomes.dead(held, "PayloadTooLarge", size, "malformed"))
            return
        try:
            env = held.env = wire.decode_envelope(job.data)
        except Exception as exc:
            msg = f"job data can't be decoded: {exc}"
            self.job_done(held, self.outcomes.dead(held, "MalformedJob", msg, "malformed"))
            return
        if env.expires is not None and time.time() > env.expires:
            self.job_done(held, self.outcomes.expired(held, env.expires))
            return
        td = q.tasks.get(env.task)
        if td is None:
            msg = f"no task named {env.task!r} in queue {q.name!r} (worker runs {self.spec})"
            self.job_done(held, self.outcomes.dead(held, "UnknownTask", msg, "unknown_task"))
            return
        timeout = env.timeout if env.timeout is not None else td.timeout
        if held.attempts == 1 and env.submitted > 0:
            self.metrics.task(env.task).wait.observe(max(0.0, time.time() - env.submitted))
        if env.after:  # its parents' results come first in its arguments: read them first
            assert self._tg is not None
            self._tg.start_soon(self._start_after, held, env, timeout)
            return
        self._to_pool(held, env, env.args, timeout)

    async def _start_after(self, held: Held, env: wire.Envelope, timeout: float | None) -> None:
        try:
            args = await with_parents(self.queue, env)
        except Exception as exc:  # Redis unreachable: hand it back, uncounted, for later
            self.outage.failed("reading a job's parents' results", exc)
            self.job_done(held, self.outcomes.release(held))
            return
        if isinstance(args, wire.ErrorInfo):
            log.info("job %s: not run: %s", held.id, args.message,
                     extra=job_fields(held, self.id, "cancelled"))  # fmt: skip
            self.job_done(held, self.outcomes.cancelled(held, args))
        elif not self.stopping.is_set():
            self._to_pool(held, env, args, timeout)
        else:
            self.job_done(held, self.outcomes.release(held))

    def _to_pool(
        self, held: Held, env: wire.Envelope, args: msgspec.Raw, timeout: float | None
    ) -> None:
        assert self.pool is not None
        progress = msgspec.Raw(held.job.progress) if held.job.progress else wire.NIL
        job = wire.ChildJob(env.task, args, env.kwargs, held.id, held.attempts, progress)
        concurrent = self._concurrent.get(env.task)
        if concurrent is None:
            fn = self.queue.tasks[env.task].fn
            concurrent = self._concurrent[env.task] = inspect.iscoroutinefunction(fn)
        held.work = self.pool.submit(
            job, timeout, lambda reply: self._on_reply(held, reply), held, concurrent
        )

    def _started(self, work: Work) -> None:
        """A child was given a job."""
        held: Held = work.tag
        self.metrics.task(held.task).started.inc()
        if self.spans is not None:
            self.spans.start(held)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "→ %s job %s attempt %d", held.task, held.id, held.attempts,
                extra=job_fields(held, self.id, "started"),
            )  # fmt: skip

    def _on_reply(self, held: Held, reply: wire.ChildReply | None) -> None:
        """The pool is done with a job: a reply, or None when it was taken back."""
        if self.spans is not None:
            self.spans.end(held, reply)
        if held.id in self.cancelling:
            self.cancelling.discard(held.id)
            if reply is None or not reply.ok:  # stopped (or failed) after its cancel was asked
                self.job_done(held, self.outcomes.cancelled(held))
                return
        if reply is not None:
            work = held.work
            if work is not None and work.started_at:
                held.run_s = time.monotonic() - work.started_at
                self.metrics.task(held.task).run.observe(held.run_s)
            if reply.ok:
                self.completions.add(held)
            self.job_done(held, self.outcomes.reply(held, reply))
        elif held.lost:
            self.counters["lost"] += 1
            log.warning("job %s: lease lost; its outcome is dropped", held.id)
            self.job_done(held, None)
        else:
            self.job_done(held, self.outcomes.release(held))

    def job_done(self, held: Held, item: FinishItem | None) -> None:
        """A job stopped running: queue its outcome (None: drop it, the lease is gone)."""
        self.running -= 1
        self._notify()
        if not self.running:
            self._idle.set()
        if item is None:
            self.held.pop(held.id, None)
        else:
            self.finisher.put(held, item)

    def _finished(self, pending: Pending, applied: int) -> None:
        if self.held.get(pending.held.id) is pending.held:
            del self.held[pending.held.id]
        self.count(pending.held, pending.item, applied)

    def count(self, held: Held, item: FinishItem, applied: int) -> None:
        """Count what the finish script did with an outcome, as Redis counts it."""
        if applied == 1:
            counter = {"ok": "completed", "retry": "retried", "dead": "dead",
                       "release": "snoozed" if item.delay_ms else "released",
                       "cancel": "cancelled"}  # fmt: skip
            self.counters[counter[item.kind]] += 1
            if item.kind not in ("release", "cancel"):
                series = self.metrics.task(held.task)
                if item.kind == "ok":
                    series.succeeded.inc()
                else:
                    series.failed.inc()
                    (series.retried if item.kind == "retry" else series.dead).inc()
            if item.reaping:
                self.counters["recovered"] += 1
        elif applied == 0:
            self.counters["fenced"] += 1
            log.warning("job %s: outcome rejected, the lease was lost (fenced)", item.id)
