"""The producer side: ``Queue`` registers tasks, submits jobs and manages dead letters.

A queue loads the Redis client (redis-py, and the modules of aioqueue built on it) when it first
needs Redis, not when it is made: a worker's children import the task module, which makes the
queue, and run its tasks without ever talking to Redis (see :func:`.urls.schemes_only`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Unpack, overload

import msgspec

from . import wire
from ._cancel import cancel_jobs, envelopes, matching
from ._coalesce import Coalescer, Reply, prepare
from ._redis import call_redis
from .errors import (
    AioqueueError,
    InvalidOptions,
    QueueFull,
    RedisUnavailable,
    UnknownTask,
)
from .hooks import ChildHooks
from .info import DeadLetter, QueueInfo
from .job import Job, JobStatus, status_of
from .keys import REGISTRY, Keys, validate_queue_name
from .options import NO_OPTIONS, Options, OptionsKwargs, Spec, Submits, Submitter, make_options
from .schedule import Misfire, Schedule
from .script_values import NewJob
from .sync import SyncQueue
from .task import TaskDef, task_name
from .urls import check_url

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .results import Results
    from .scripts import Scripts

__all__ = ("Queue",)

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_RESULT_TTL = 24 * 3600.0
DEFAULT_MAX_PAYLOAD = 1 << 20
DEFAULT_DEAD_TTL = 7 * 24 * 3600.0
DEFAULT_MAX_DEAD = 10_000


class Queue(Submits, ChildHooks):
    """A named queue on Redis: register tasks on it, submit jobs, await results; and with
    :meth:`on_child_start` and :meth:`on_child_stop`, what each worker child runs around them.

    :param name: the queue's name (letters, digits and ``_.:-``).
    :param redis_url: else ``$AIOQUEUE_REDIS_URL``, else ``redis://localhost:6379/0``; auth, TLS
        (``rediss://``), unix sockets (``unix://``) and the db number all go in the URL; a Redis
        Cluster is ``redis+cluster://host:port[,host:port...]``, a master found through Sentinel
        ``redis+sentinel://host:port[,host:port...]/SERVICE[/DB]`` (see
        :mod:`aioqueue.connect`).
    :param result_ttl: seconds results (and de-duplication keys of finished jobs) are kept.
    :param max_payload: largest encoded job in bytes, checked before anything is written.
    :param connect_timeout: seconds to wait for a connection to Redis.
    :param redis_retries: how often a Redis command is retried on a lost connection (with
        backoff) before :class:`~aioqueue.RedisUnavailable` is raised; every write is
        idempotent, so a retry never duplicates a job. (Not a task's ``retries``, which counts
        attempts of a job.)
    :param max_connections: connections in the pool (on a cluster: commands in flight); callers
        beyond it wait for a free one.
    :param dead_ttl: seconds a dead-lettered job is kept (default 7 days).
    :param max_dead: most dead-lettered jobs kept; beyond it the oldest are dropped first.
    :param max_pending: most jobs waiting (pending and scheduled) the queue takes; a submit
        beyond it waits for workers to make room (or raises :class:`~aioqueue.QueueFull`
        with ``options(block=False)``). None: no bound.
    :raises InvalidOptions: naming the setting out of range, or a URL Redis can't use.
    """

    def __init__(
        self,
        name: str,
        redis_url: str | None = None,
        *,
        result_ttl: float = DEFAULT_RESULT_TTL,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        connect_timeout: float = 2.0,
        redis_retries: int = 5,
        max_connections: int = 50,
        dead_ttl: float = DEFAULT_DEAD_TTL,
        max_dead: int = DEFAULT_MAX_DEAD,
        max_pending: int | None = None,
    ) -> None:
        try:
            self.name = validate_queue_name(name)
        except ValueError as exc:
            raise InvalidOptions(str(exc)) from None
        _positive("result_ttl", result_ttl)
        _positive("connect_timeout", connect_timeout)
        _positive("dead_ttl", dead_ttl)
        _int_at_least("max_payload", max_payload, 64, " bytes")
        _int_at_least("redis_retries", redis_retries, 0)
        _int_at_least("max_connections", max_connections, 1)
        _int_at_least("max_dead", max_dead, 1)
        if max_pending is not None:
            _int_at_least("max_pending", max_pending, 1)
        url = redis_url or os.environ.get("AIOQUEUE_REDIS_URL") or DEFAULT_URL
        self.redis_url = check_url(url)
        self.result_ttl = result_ttl
        self.max_payload = max_payload
        self.connect_timeout = connect_timeout
        self.redis_retries = redis_retries
        self.max_connections = max_connections
        self.dead_ttl = dead_ttl
        self.max_dead = max_dead
        self.max_pending = max_pending
        self.keys = Keys(name)
        self.tasks: dict[str, TaskDef] = {}
        self.schedules: dict[str, Schedule] = {}  # fired by the workers serving the queue
        self._by_fn: dict[Callable[..., Any], TaskDef] = {}
        self._redis: Redis | None = None
        self._scripts: Scripts | None = None
        self._registered = False  # in the registry of queues (done on the first submit)
        self._waits: Results | None = None
        self._coalescer = Coalescer(self._send)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    # -- tasks -----------------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> F: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        concurrency: int | None = None,
        rate: tuple[int, float] | None = None,
    ) -> Callable[[F], F]: ...
    def task(
        self,
        fn: Any = None,
        /,
        *,
        name: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        concurrency: int | None = None,
        rate: tuple[int, float] | None = None,
    ) -> Any:
        """Register a plain function as a task; it runs in a worker's child process.

        :param name: registered name (default ``module.qualname``).
        :param retries: attempts after the first (default 2).
        :param timeout: seconds an attempt may run before its child is killed.
        :param cron: also submit it, without arguments, on this cron schedule (in ``tz``);
            or ``every`` so many seconds. See :meth:`schedule` for the rest.
        :param concurrency: at most this many of its jobs run at once, across all workers (its
            jobs beyond wait in Redis, in submit order).
        :param rate: ``(count, seconds)``: at most ``count`` of its jobs start in any ``seconds``,
            across all workers.
        """

        def register(f: F) -> F:
            kwargs: dict[str, Any] = {"timeout": timeout, "concurrency": concurrency, "rate": rate}
            if retries is not None:
                kwargs["retries"] = retries
            td = TaskDef(name or task_name(f), f, **kwargs)
            self.tasks[td.name] = td
            self._by_fn[f] = td
            if cron is not None or every is not None:
                self.schedule(td.name, cron=cron, every=every, tz=tz)
            return f

        return register(fn) if fn is not None else register

    def schedule(
        self,
        fn: Callable[..., Any] | str,
        /,
        *,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        misfire: Misfire = "once",
        catch_up: int = 100,
    ) -> Schedule:
        """Submit a task on a cron schedule (read in ``tz``) or every ``every`` seconds; every
        worker serving the queue fires it, and each tick's job is submitted once in all.

        :param misfire: ticks missed while no worker ran: ``"skip"`` them, fire the latest
            ``"once"``, or fire ``"all"`` (the latest ``catch_up`` at most).
        :raises InvalidOptions: a bad expression, interval, zone or policy, or a name taken.
        :raises ArgumentError: ``args``/``kwargs`` don't fit the task.
        """
        task, td = self._resolve(fn)
        s = Schedule(name or task, task, cron, every, tz, tuple(args), dict(kwargs or {}),
                     misfire, catch_up)  # fmt: skip
        if s.name in self.schedules:
            raise InvalidOptions(f"queue {self.name!r} has a schedule named {s.name!r} already")
        self._prepare(task, td, s.args, s.kwargs, NO_OPTIONS)  # the arguments fit and encode
        self.schedules[s.name] = s
        return s

    def _resolve(self, fn: Callable[..., Any] | str) -> tuple[str, TaskDef | None]:
        if isinstance(fn, str):
            if not fn:
                raise UnknownTask("task name must not be empty")
            return fn, self.tasks.get(fn)
        td = self._by_fn.get(fn)
        if td is None:
            raise UnknownTask(
                f"{getattr(fn, '__qualname__', fn)!r} is not a task of queue {self.name!r}: "
                f"decorate it with @queue.task, or submit it by its registered name"
            )
        return td.name, td

    # -- connection ------------------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        """The queue's Redis client (created on first use)."""
        if self._redis is None:
            from .scripts import Scripts

            self._redis = self._make_client()
            self._scripts = Scripts(self._redis, self.keys, self.redis_url, links=True)
        return self._redis

    @property
    def _results(self) -> Results:
        """Waits for results: one subscription to finished jobs for all of them (made on first
        use)."""
        if self._waits is None:
            from .results import Results

            self._waits = Results(self)
        return self._waits

    @property
    def sync(self) -> SyncQueue:
        """Blocking calls for synchronous code, one handle per queue (see :class:`SyncQueue`):
        ``queue.sync.submit(render, 40).result(timeout=10)``."""
        handle: SyncQueue | None = self.__dict__.get("_sync")
        if handle is None:  # threads racing here all get the first handle stored
            handle = self.__dict__.setdefault("_sync", SyncQueue(self))
        return handle

    @property
    def scripts(self) -> Scripts:
        """The queue's scripts, bound to :attr:`redis`."""
        self.redis  # noqa: B018 - creates the client and scripts
        assert self._scripts is not None
        return self._scripts

    def _make_client(self, *, socket_timeout: float = 10.0, retries: int | None = None) -> Redis:
        """A client of its own (for one server, a cluster or a Sentinel-managed master, as the
        URL says; see :mod:`aioqueue.connect`); ``retries``: its command retries (default
        :attr:`redis_retries`)."""
        from .connect import client

        return client(
            check_url(self.redis_url),
            max_connections=self.max_connections,
            connect_timeout=self.connect_timeout,
            socket_timeout=socket_timeout,
            retries=self.redis_retries if retries is None else retries,
        )

    async def __aenter__(self) -> Queue:
        try:
            await call_redis(self.redis.ping(), self.redis_url)
        except BaseException:  # no __aexit__ follows: close what was opened (a Sentinel's links)
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for submits under way, stop waiting for results, close connections."""
        await self._coalescer.drain()
        if self._waits is not None:
            await self._waits.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self._scripts = None

    # -- submit ----------------------------------------------------------------------------

    def _target(self) -> tuple[Queue, Options]:
        return self, NO_OPTIONS

    def options(self, **kwargs: Unpack[OptionsKwargs]) -> Submitter:
        """Submit with options: ``await queue.options(key="report-42", delay=5).submit(fn, x)``.

        See :class:`Options` for each option; ``after`` takes jobs or their ids.

        :raises InvalidOptions: naming the option out of range.
        """
        return Submitter(self, make_options(**kwargs))

    async def _submit(self, fn: Callable[..., Any] | str, calls: Sequence[Spec]) -> list[Job[Any]]:
        """The one submit path: check and encode every job, then send them through the
        coalescer (see :mod:`aioqueue._coalesce`)."""
        name, td = self._resolve(fn)
        prepared = [self._prepare(name, td, a, k, o) for a, k, o in calls]
        rtype = td.return_type if td is not None else Any
        epoch = self._results.live_epoch()
        if not self._registered:
            await self._register_once()
        replies = await self._coalescer.submit(prepared)
        full = sum(r < 0 for _, r in replies)
        if full and not calls[0][2].block:
            raise QueueFull(
                f"queue {self.name!r} holds {self.max_pending:,} waiting jobs (its max_pending):"
                f" {full} of {len(replies)} job(s) not submitted",
                [Job(self, i, rtype, r == 1, epoch) for i, r in replies if r >= 0],
            )
        if full:
            replies = await self._coalescer.until_room(prepared, replies, self._results.room)
        return [Job(self, job_id, rtype, r == 1, epoch) for job_id, r in replies]

    def _prepare(
        self,
        name: str,
        td: TaskDef | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
    ) -> NewJob:
        return prepare(name, td, args, kwargs, opts, self.max_payload)

    # -- script calls: one method each -----------------------------------------------------

    def _send(self, jobs: list[NewJob]) -> Awaitable[list[Reply]]:
        """Run the submit script for these jobs (the call, to await); per job, its id (the
        original job's, when a de-duplication key matched) and whether it was created."""
        return self.scripts.submit(jobs, self.max_pending or 0)

    async def _outcomes(self, job_ids: list[str]) -> list[Any]:
        """Per id, in one step: the outcome bytes, else True if the job exists, else False."""
        return await self.scripts.outcomes(job_ids)

    async def _status(self, job_id: str) -> JobStatus:
        state, outcome = await self.scripts.status(job_id)
        return status_of(state, outcome)

    # -- jobs ------------------------------------------------------------------------------

    def job(self, job_id: str, result_type: Any = Any) -> Job[Any]:
        """A handle to a job known only by its id (for example, in another process)."""
        return Job(self, job_id, result_type)

    async def cancel(self, job_ids: Sequence[str], *, wait: float = 30.0) -> list[bool]:
        """Cancel jobs: one that has not started never runs; a running one is stopped by the
        worker holding it, which kills its child at its next heartbeat and records the job as
        cancelled, with no retry. Per id, True if the job is cancelled (by this call or an
        earlier one: a retried cancel answers the same), False if it finished otherwise (also
        when it finished before its worker could stop it) or is unknown.

        :param wait: seconds to wait for running jobs to be stopped; one still stopping then
            counts as cancelled (its worker stops it at its next heartbeat, or recovery does
            when that worker is gone).
        """
        return await cancel_jobs(self, job_ids, wait)

    async def cancel_where(
        self, *, task: str | None = None, key: str | None = None, wait: float = 30.0
    ) -> list[str]:
        """Cancel every unfinished job of ``task`` (a registered name) and/or with
        de-duplication ``key``, as :meth:`cancel` does; the ids cancelled. Reads every
        unfinished job's envelope (``HSCAN`` of the jobs hash, 1,000 at a time): for bulk
        cases, not a hot path.

        :raises InvalidOptions: neither ``task`` nor ``key`` given.
        """
        if task is None and key is None:
            raise InvalidOptions("cancel_where needs task= or key= (or both)")
        ids = await matching(self, task, key)
        return [i for i, done in zip(ids, await cancel_jobs(self, ids, wait), strict=True) if done]

    async def info(self) -> QueueInfo:
        """Counts of pending, scheduled, running and dead jobs, workers (live by heartbeat
        deadline; the others listed as gone), lifetime counters and whether the queue is
        paused, read in one step."""
        r = await self.scripts.info()
        return QueueInfo(
            pending=r.pending,
            scheduled=r.scheduled,
            running=r.running,
            dead=r.dead,
            workers=len(r.live_workers),
            live_workers=r.live_workers,
            gone_workers=r.gone_workers,
            counters=r.counters,
            paused=r.paused,
            last_minute=r.last_minute or {},
            waiting=r.waiting,
        )

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead-lettered jobs, with every attempt's error."""
        out = []
        for row in await self.scripts.dead_letters(limit):
            task = "?"
            if row.data is not None:
                with contextlib.suppress(msgspec.DecodeError):
                    task = wire.decode_envelope(row.data).task
            errors = wire.decode_errors(row.errors) if row.errors else []
            out.append(
                DeadLetter(id=row.id, task=task, dead_at=row.dead_at_ms / 1000, errors=errors)
            )
        return out

    async def requeue_dead(self, job_ids: Sequence[str]) -> int:
        """Move dead-lettered jobs back to pending with fresh attempts; returns how many moved."""
        envs = await envelopes(self, job_ids)
        jobs = [(i, env.key if env else None) for i, env in zip(job_ids, envs, strict=True)]
        return sum(await self.scripts.requeue(jobs))

    async def purge_dead(self, job_ids: Sequence[str]) -> int:
        """Delete dead-lettered jobs for good; returns how many were purged."""
        return await self.scripts.purge(job_ids)

    # -- registry --------------------------------------------------------------------------

    async def _register_once(self) -> None:
        """Register the queue on its first submit; best effort: an ACL user may lack the right
        to write the registry, and a Redis that is down fails the submit itself just after."""
        self._registered = True
        try:
            await self.register()
        except RedisUnavailable:  # the submit would wait for the same Redis again: fail now
            self._registered = False
            raise
        except AioqueueError as exc:
            log.debug("queue %r not added to the registry: %s", self.name, exc)

    async def register(self) -> None:
        """Add the queue's name to the registry of queues (``aioqueue:queues``), where
        ``aioqueue info`` finds it; one command, and asking again changes nothing."""
        await call_redis(self.redis.sadd(REGISTRY, self.name), self.redis_url)

    # -- pause -----------------------------------------------------------------------------

    async def pause(self) -> None:
        """Stop workers from claiming this queue's jobs: every claim reads the flag, so none
        made after this returns leases a job. Jobs already claimed (running, or claimed ahead
        with ``--prefetch``) finish; submits, delays, retries and the recovery of expired leases
        go on. One command, idempotent."""
        await self.scripts.pause()

    async def resume(self) -> None:
        """Let workers claim again: the flag is cleared and a blocked worker woken in one
        script call, so pending jobs start at once (no worker polls for it). Idempotent."""
        await self.scripts.resume()

    async def paused(self) -> bool:
        """Whether the queue is paused (one command)."""
        return await self.scripts.paused()


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidOptions(f"{name} must be > 0 seconds, got {value!r}")


def _int_at_least(name: str, value: object, least: int, unit: str = "") -> None:
    if type(value) is not int or value < least:
        raise InvalidOptions(f"{name} must be an int >= {least}{unit}, got {value!r}")
