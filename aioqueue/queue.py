"""The producer side: ``Queue`` (tasks, submit, results, dead letters) and ``Job`` handles."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

import msgspec
from redis import exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from . import wire
from ._redis import call_redis
from ._redis import to_str as _str
from .errors import (
    InvalidOptions,
    JobCancelled,
    JobFailed,
    JobNotFound,
    PayloadTooLarge,
    ResultTimeout,
    UnknownTask,
)
from .keys import Keys, validate_queue_name
from .scripts import Scripts
from .task import TaskDef, task_name, unencodable_error

__all__ = ("Call", "Job", "JobStatus", "Options", "Queue", "QueueInfo", "DeadLetter")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_RESULT_TTL = 24 * 3600.0
DEFAULT_MAX_PAYLOAD = 1 << 20
MAX_BATCH = 1000
RECENT_FINISHED = 10_000  # finished ids remembered for waits that come after the message
PRIORITY_RANGE = 1_000_000

JobStatus = Literal["pending", "scheduled", "running", "complete", "failed", "dead", "unknown"]


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """Per-submit options, kept apart from the task's own keyword arguments.

    :ivar key: de-duplication key: while a job with this key exists, or within the result TTL
        after it finished, a submit with the same key returns a handle to that original job.
    :ivar delay: seconds to wait before the job may run.
    :ivar priority: higher runs first (default 0); jobs of one priority run in submit order.
    :ivar timeout: seconds an attempt may run (overrides the task's).
    :ivar retries: attempts after the first (overrides the task's).
    :ivar result_ttl: seconds the result is kept (overrides the queue's).
    """

    key: str | None = None
    delay: float = 0.0
    priority: int = 0
    timeout: float | None = None
    retries: int | None = None
    result_ttl: float | None = None

    def validate(self) -> None:
        """:raises InvalidOptions: naming the first option out of range."""
        if self.key is not None and (not isinstance(self.key, str) or not 0 < len(self.key) <= 512):
            raise InvalidOptions(f"key must be a non-empty str of at most 512 chars: {self.key!r}")
        if not isinstance(self.delay, int | float) or not 0 <= self.delay < 10**9:
            raise InvalidOptions(f"delay must be >= 0 seconds, got {self.delay!r}")
        if type(self.priority) is not int or abs(self.priority) > PRIORITY_RANGE:
            raise InvalidOptions(
                f"priority must be an int within ±{PRIORITY_RANGE}, got {self.priority!r}"
            )
        if self.timeout is not None and (
            not isinstance(self.timeout, int | float) or not 0 < self.timeout < math.inf
        ):
            raise InvalidOptions(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.retries is not None and (type(self.retries) is not int or self.retries < 0):
            raise InvalidOptions(f"retries must be an int >= 0, got {self.retries!r}")
        if self.result_ttl is not None and (
            not isinstance(self.result_ttl, int | float) or not self.result_ttl > 0
        ):
            raise InvalidOptions(f"result_ttl must be > 0 seconds, got {self.result_ttl!r}")


_NO_OPTIONS = Options()


class Call:
    """Arguments of one job in :meth:`Queue.submit_many`: ``Call(*args, **kwargs)``."""

    __slots__ = ("args", "kwargs", "options")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.options = _NO_OPTIONS

    def with_options(self, options: Options) -> Call:
        """Give this one job its own options."""
        self.options = options
        return self


class QueueInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of a queue's jobs and its lifetime counters."""

    pending: int
    scheduled: int
    running: int
    dead: int
    workers: int
    counters: dict[str, int]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A dead-lettered job: its task and every attempt's error."""

    id: str
    task: str
    dead_at: float
    errors: list[wire.ErrorInfo]


class _Prepared:
    __slots__ = ("id", "data", "priority", "delay_ms", "key", "task")

    def __init__(
        self,
        id: str,
        data: bytes,
        priority: int,
        delay_ms: int,
        key: str | None,
        task: TaskDef | None,
    ) -> None:
        self.id = id
        self.data = data
        self.priority = priority
        self.delay_ms = delay_ms
        self.key = key
        self.task = task


def new_job_id() -> str:
    """A job id that sorts by creation time (so jobs of one priority run in submit order)."""
    return f"{time.time_ns():016x}{os.urandom(5).hex()}"


class Job(Generic[R]):
    """A handle to a submitted job. ``await job.result()`` gives its return value."""

    __slots__ = ("id", "queue", "_rtype", "created", "_epoch")

    def __init__(
        self,
        queue: Queue,
        id: str,
        rtype: Any = Any,
        created: bool = True,
        epoch: int | None = None,
    ) -> None:
        self.id = id
        self.queue = queue
        self._rtype = rtype
        #: False when a de-duplication key matched an earlier job, which this handle points to.
        self.created = created
        # the result subscription's epoch when the job was submitted, if it was live then
        self._epoch = epoch if created else None

    def __repr__(self) -> str:
        return f"Job({self.id!r}, queue={self.queue.name!r})"

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its value; can be awaited again.

        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises JobFailed: the final attempt failed, or the job was dead-lettered.
        :raises JobCancelled: the job was cancelled before it started.
        :raises JobNotFound: the queue knows no such job (or its result expired).
        :raises ResultTimeout: ``timeout`` passed first; the job goes on.
        """
        try:
            data = await asyncio.wait_for(self.queue._results.wait(self.id, self._epoch), timeout)
        except TimeoutError:
            raise ResultTimeout(f"job {self.id} not finished after {timeout} s") from None
        outcome = wire.decode_outcome(data)
        if outcome.cancelled:
            raise JobCancelled(f"job {self.id} ({outcome.task}) was cancelled")
        if not outcome.ok:
            err = outcome.error or wire.ErrorInfo(type="Error", message="unknown failure")
            raise JobFailed(
                self.id, outcome.task, err.type, err.message, err.traceback, outcome.attempts
            )
        return msgspec.msgpack.decode(outcome.value, type=self._rtype)  # type: ignore[no-any-return]

    async def status(self) -> JobStatus:
        """Where the job is now."""
        return await self.queue._status(self.id)

    async def cancel(self) -> bool:
        """Withdraw the job if it has not started; True if it was cancelled."""
        return (await self.queue.cancel([self.id]))[0]


class _Submitter:
    """Submits with fixed options: ``queue.options(key=..., delay=...).submit(fn, ...)``."""

    __slots__ = ("_queue", "_options")

    def __init__(self, queue: Queue, options: Options) -> None:
        options.validate()
        self._queue = queue
        self._options = options

    @overload
    async def submit(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...
    @overload
    async def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    async def submit(self, fn: str, *args: Any, **kwargs: Any) -> Job[Any]: ...
    async def submit(self, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job[Any]:
        """Submit one job with these options (see :meth:`Queue.submit`)."""
        return (await self._queue._submit(fn, [(args, kwargs, self._options)]))[0]

    async def submit_many(
        self, fn: Callable[..., R] | str, calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[Job[R]]:
        """Submit many jobs with these options (see :meth:`Queue.submit_many`)."""
        return await self._queue._submit(fn, _calls(calls, self._options))


def _calls(
    calls: Iterable[tuple[Any, ...] | Call], options: Options
) -> list[tuple[tuple[Any, ...], dict[str, Any], Options]]:
    out: list[tuple[tuple[Any, ...], dict[str, Any], Options]] = []
    for c in calls:
        if isinstance(c, Call):
            out.append((c.args, c.kwargs, options if c.options is _NO_OPTIONS else c.options))
        elif isinstance(c, tuple):
            out.append((c, {}, options))
        else:
            raise InvalidOptions(f"submit_many takes tuples of arguments or Call(...), got {c!r}")
    return out


class Queue:
    """A named queue on Redis: register tasks on it, submit jobs, await results.

    :param name: the queue's name (letters, digits and ``_.:-``).
    :param redis_url: else ``$AIOQUEUE_REDIS_URL``, else ``redis://localhost:6379/0``; auth, TLS
        (``rediss://``), unix sockets (``unix://``) and the db number all go in the URL.
    :param result_ttl: seconds results (and de-duplication keys of finished jobs) are kept.
    :param max_payload: largest encoded job in bytes, checked before anything is written.
    :param connect_timeout: seconds to wait for a connection to Redis.
    :param retries: how often a command is retried on a lost connection (with backoff) before
        :class:`~aioqueue.RedisUnavailable` is raised; every write is idempotent, so a retry never
        duplicates a job.
    :param max_connections: connections in the pool; callers beyond it wait for a free one.
    """

    def __init__(
        self,
        name: str,
        redis_url: str | None = None,
        *,
        result_ttl: float = DEFAULT_RESULT_TTL,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        connect_timeout: float = 2.0,
        retries: int = 5,
        max_connections: int = 50,
    ) -> None:
        try:
            self.name = validate_queue_name(name)
        except ValueError as exc:
            raise InvalidOptions(str(exc)) from None
        if not result_ttl > 0:
            raise InvalidOptions(f"result_ttl must be > 0 seconds, got {result_ttl!r}")
        if not isinstance(max_payload, int) or max_payload < 64:
            raise InvalidOptions(f"max_payload must be an int >= 64 bytes, got {max_payload!r}")
        self.redis_url = redis_url or os.environ.get("AIOQUEUE_REDIS_URL") or DEFAULT_URL
        self.result_ttl = result_ttl
        self.max_payload = max_payload
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.max_connections = max_connections
        self.keys = Keys(name)
        self.tasks: dict[str, TaskDef] = {}
        self._by_fn: dict[Callable[..., Any], TaskDef] = {}
        self._redis: Redis | None = None
        self._scripts: Scripts | None = None
        self._results = _Results(self)
        self._batch: list[tuple[_Prepared, asyncio.Future[tuple[str, bool]]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

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
    ) -> Callable[[F], F]: ...
    def task(
        self,
        fn: Any = None,
        /,
        *,
        name: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register a plain function as a task; it runs in a worker's child process.

        :param name: registered name (default ``module.qualname``).
        :param retries: attempts after the first (default 2).
        :param timeout: seconds an attempt may run before its child is killed.
        """

        def register(f: F) -> F:
            kwargs: dict[str, Any] = {"timeout": timeout}
            if retries is not None:
                kwargs["retries"] = retries
            td = TaskDef(name or task_name(f), f, **kwargs)
            self.tasks[td.name] = td
            self._by_fn[f] = td
            return f

        return register(fn) if fn is not None else register

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
            self._redis = self._make_client()
            self._scripts = Scripts(self._redis)
        return self._redis

    @property
    def scripts(self) -> Scripts:
        """The queue's scripts, bound to :attr:`redis`."""
        self.redis  # noqa: B018 - creates the client and scripts
        assert self._scripts is not None
        return self._scripts

    def _make_client(self, *, socket_timeout: float = 10.0, retries: int | None = None) -> Redis:
        pool = BlockingConnectionPool.from_url(
            self.redis_url,
            max_connections=self.max_connections,
            timeout=self.connect_timeout + socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
            retry=Retry(
                ExponentialBackoff(cap=1.0, base=0.05),
                self.retries if retries is None else retries,
            ),
            retry_on_error=[rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError],
            health_check_interval=30,
        )
        return Redis.from_pool(pool)

    async def __aenter__(self) -> Queue:
        await call_redis(self.redis.ping(), self.redis_url)
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
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._results.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self._scripts = None

    # -- submit ----------------------------------------------------------------------------

    def options(
        self,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        timeout: float | None = None,
        retries: int | None = None,
        result_ttl: float | None = None,
    ) -> _Submitter:
        """Submit with options: ``await queue.options(key="report-42", delay=5).submit(fn, x)``.

        :raises InvalidOptions: naming the option out of range.
        """
        return _Submitter(
            self,
            Options(
                key=key,
                delay=delay,
                priority=priority,
                timeout=timeout,
                retries=retries,
                result_ttl=result_ttl,
            ),
        )

    @overload
    async def submit(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...
    @overload
    async def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    async def submit(self, fn: str, *args: Any, **kwargs: Any) -> Job[Any]: ...
    async def submit(self, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job[Any]:
        """Submit one job; returns once the job is durably in Redis.

        ``fn`` is a registered task, or a task's registered name (the producer need not import
        the task's code). With the function at hand, arguments are checked against its signature
        and annotations before anything is written.

        :raises ArgumentError: arguments don't fit the task (names the parameter).
        :raises SerializationError: an argument can't be encoded (names the parameter).
        :raises PayloadTooLarge: the encoded job is over ``max_payload``.
        :raises UnknownTask: ``fn`` is a function that is not a task of this queue.
        :raises RedisUnavailable: Redis could not be reached after a bounded wait.
        :raises RedisOutOfMemory: Redis is at ``maxmemory``; nothing was written.
        """
        return (await self._submit(fn, [(args, kwargs, _NO_OPTIONS)]))[0]

    async def submit_many(
        self, fn: Callable[..., R] | str, calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[Job[R]]:
        """Submit many jobs of one task in few round trips: ``calls`` holds a tuple of positional
        arguments, or a :class:`Call`, per job. Every job is checked before any is written.
        """
        return await self._submit(fn, _calls(calls, _NO_OPTIONS))

    async def _submit(
        self,
        fn: Callable[..., Any] | str,
        calls: Sequence[tuple[tuple[Any, ...], dict[str, Any], Options]],
    ) -> list[Job[Any]]:
        name, td = self._resolve(fn)
        prepared = [self._prepare(name, td, a, k, o) for a, k, o in calls]
        rtype = td.return_type if td is not None else Any
        epoch = self._results.live_epoch()
        if len(prepared) == 1:
            job_id, created = await self._coalesce(prepared[0])
            return [Job(self, job_id, rtype, created, epoch)]
        out: list[Job[Any]] = []
        for i in range(0, len(prepared), MAX_BATCH):
            replies = await self._send(prepared[i : i + MAX_BATCH])
            out.extend(Job(self, jid, rtype, created, epoch) for jid, created in replies)
        return out

    def _prepare(
        self,
        name: str,
        td: TaskDef | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
    ) -> _Prepared:
        if opts is not _NO_OPTIONS:
            opts.validate()
        if td is not None:
            args, kwargs = td.check(args, kwargs)
        try:
            raw_args = wire.encode(list(args)) if args else None
            raw_kwargs = wire.encode(kwargs) if kwargs else None
        except (TypeError, ValueError, OverflowError):
            if td is not None:
                raise td.unencodable(args, kwargs) from None
            raise unencodable_error(name, args, kwargs) from None
        job_id = new_job_id()
        env = wire.Envelope(
            v=wire.WIRE_VERSION,
            id=job_id,
            task=name,
            args=msgspec.Raw(raw_args) if raw_args is not None else wire.EMPTY_ARGS,
            kwargs=msgspec.Raw(raw_kwargs) if raw_kwargs is not None else wire.EMPTY_KWARGS,
            retries=opts.retries if opts.retries is not None else (td.retries if td else None),
            timeout=opts.timeout if opts.timeout is not None else (td.timeout if td else None),
            priority=opts.priority,
            key=opts.key,
            result_ttl=opts.result_ttl,
            submitted=time.time(),
        )
        data = wire.encode(env)
        if len(data) > self.max_payload:
            raise PayloadTooLarge(
                f"{name}: encoded job is {len(data):,} bytes, over the queue's "
                f"max_payload limit of {self.max_payload:,} bytes"
            )
        return _Prepared(job_id, data, opts.priority, int(opts.delay * 1000), opts.key, td)

    def _coalesce(self, p: _Prepared) -> asyncio.Future[tuple[str, bool]]:
        """Join the batch of submits made in this turn of the event loop: one round trip each."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, bool]] = loop.create_future()
        self._batch.append((p, fut))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        for i in range(0, len(batch), MAX_BATCH):
            task = asyncio.ensure_future(self._flush_batch(batch[i : i + MAX_BATCH]))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_batch(
        self, batch: list[tuple[_Prepared, asyncio.Future[tuple[str, bool]]]]
    ) -> None:
        try:
            replies = await self._send([p for p, _ in batch])
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), reply in zip(batch, replies, strict=True):
            if not fut.done():
                fut.set_result(reply)

    async def _send(self, prepared: list[_Prepared]) -> list[tuple[str, bool]]:
        k = self.keys
        keys = [k.jobs, k.pending, k.scheduled, k.priority, k.wake]
        args: list[Any] = []
        for p in prepared:
            keys.append(k.result(p.id))
            keys.append(k.dedup(p.key) if p.key is not None else k.jobs)
            args += [p.id, p.data, p.priority, p.delay_ms, "1" if p.key is not None else "0"]
        reply = await call_redis(self.scripts.call("submit", keys, args), self.redis_url)
        return [(_str(reply[i]), bool(reply[i + 1])) for i in range(0, len(reply), 2)]

    # -- jobs ------------------------------------------------------------------------------

    def job(self, job_id: str, result_type: Any = Any) -> Job[Any]:
        """A handle to a job known only by its id (for example, in another process)."""
        return Job(self, job_id, result_type)

    async def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        """Withdraw jobs that have not started; per id, True if it was cancelled."""
        k = self.keys
        keys = [k.pending, k.scheduled, k.jobs, k.attempts, k.priority, k.errors, k.stats]
        args: list[Any] = [k.done_channel, int(self.result_ttl * 1000)]
        envs = await call_redis(self.redis.hmget(k.jobs, list(job_ids)), self.redis_url)
        for job_id, env in zip(job_ids, envs, strict=True):
            task, key = "", None
            if env is not None:
                with contextlib.suppress(msgspec.DecodeError):
                    e = wire.decode_envelope(env)
                    task, key = e.task, e.key
            outcome = wire.Outcome(
                v=wire.WIRE_VERSION, task=task, ok=False, cancelled=True, finished=time.time()
            )
            keys += [k.result(job_id), k.dedup(key) if key else k.jobs]
            args += [job_id, wire.encode(outcome), "1" if key else "0"]
        reply = await call_redis(self.scripts.call("cancel", keys, args), self.redis_url)
        return [bool(r) for r in reply]

    async def _status(self, job_id: str) -> JobStatus:
        k = self.keys
        keys = [k.leases, k.pending, k.scheduled, k.dead, k.result(job_id), k.jobs]
        state, outcome = await call_redis(
            self.scripts.call("status", keys, [job_id]), self.redis_url
        )
        state = _str(state)
        if state == "finished":
            return "complete" if wire.decode_outcome(outcome).ok else "failed"
        return state  # type: ignore[return-value]

    async def info(self) -> QueueInfo:
        """Counts of pending, scheduled, running and dead jobs, live workers, and counters."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(k.pending)
            pipe.zcard(k.scheduled)
            pipe.zcard(k.leases)
            pipe.zcard(k.dead)
            pipe.zcard(k.workers)
            pipe.hgetall(k.stats)
            pending, scheduled, running, dead, workers, stats = await call_redis(
                pipe.execute(), self.redis_url
            )
        return QueueInfo(
            pending=pending,
            scheduled=scheduled,
            running=running,
            dead=dead,
            workers=workers,
            counters={_str(a): int(b) for a, b in stats.items()},
        )

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead-lettered jobs, with every attempt's error."""
        k = self.keys
        entries = await call_redis(
            self.redis.zrange(k.dead, 0, limit - 1, withscores=True), self.redis_url
        )
        if not entries:
            return []
        ids = [_str(m) for m, _ in entries]
        envs = await call_redis(self.redis.hmget(k.jobs, ids), self.redis_url)
        errs = await call_redis(self.redis.hmget(k.errors, ids), self.redis_url)
        out = []
        for (_, score), job_id, env, err in zip(entries, ids, envs, errs, strict=True):
            task = "?"
            if env is not None:
                with contextlib.suppress(msgspec.DecodeError):
                    task = wire.decode_envelope(env).task
            out.append(
                DeadLetter(
                    id=job_id,
                    task=task,
                    dead_at=score / 1000,
                    errors=wire.decode_errors(err) if err else [],
                )
            )
        return out

    async def requeue_dead(self, job_ids: Sequence[str]) -> int:
        """Move dead-lettered jobs back to pending with fresh attempts; returns how many moved."""
        k = self.keys
        keys = [k.dead, k.attempts, k.errors, k.pending, k.priority, k.wake, k.jobs]
        keys += [k.result(j) for j in job_ids]
        reply = await call_redis(self.scripts.call("requeue", keys, list(job_ids)), self.redis_url)
        return sum(int(r) for r in reply)

    async def purge_dead(self, job_ids: Sequence[str]) -> int:
        """Delete dead-lettered jobs for good; returns how many were purged."""
        k = self.keys
        keys = [k.dead, k.jobs, k.attempts, k.errors, k.priority]
        return int(
            await call_redis(self.scripts.call("purge", keys, list(job_ids)), self.redis_url)
        )


class _Results:
    """One pub/sub subscription per queue wakes every local waiter; no polling, no per-job
    connection. Finished ids are fetched in one round trip per batch. After each (re)subscribe,
    all waiters are checked again, so a message missed while the link was down costs nothing."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._waiters: dict[str, list[asyncio.Future[bytes]]] = {}
        self._to_check: set[str] = set()
        self._first: set[str] = set()  # ids not checked yet: unknown ones raise JobNotFound
        self._task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()
        self._epoch = 0  # bumped at each (re)subscribe
        self._recent: OrderedDict[str, None] = OrderedDict()  # finished ids nobody waited for

    def live_epoch(self) -> int | None:
        """The subscription's epoch if it is live now (a job submitted now can't be missed)."""
        return self._epoch if self._subscribed.is_set() else None

    async def wait(self, job_id: str, epoch: int | None = None) -> bytes:
        """Wait for a job's outcome. ``epoch``: the live epoch when the job was submitted; while
        the subscription is still that one, the job's finish can't have been missed, so no
        check is needed unless its message came before this wait."""
        if self._task is None or self._task.done():
            self._subscribed = asyncio.Event()
            self._task = asyncio.create_task(self._listen())
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        if self._subscribed.is_set():
            seen = epoch is not None and epoch == self._epoch
            if not seen or job_id in self._recent:
                if not seen:
                    self._first.add(job_id)
                self._check([job_id])
        try:
            return await fut
        finally:
            futs = self._waiters.get(job_id)
            if futs is not None:
                with contextlib.suppress(ValueError):
                    futs.remove(fut)
                if not futs:
                    del self._waiters[job_id]

    def _check(self, job_ids: Iterable[str], *, finished: bool = False) -> None:
        """Fetch the outcomes of these ids (with others asked for in this turn of the loop).

        ``finished``: the ids come from a finish message; remember those nobody waits for yet.
        """
        before = len(self._to_check)
        for i in job_ids:
            if i in self._waiters:
                self._to_check.add(i)
            elif finished:
                self._recent[i] = None
                if len(self._recent) > RECENT_FINISHED:
                    self._recent.clear()
                    self._epoch += 1  # forgotten finishes: jobs submitted before must check
        if not before and self._to_check:
            asyncio.get_running_loop().call_soon(self._start_check)

    def _start_check(self) -> None:
        ids, self._to_check = list(self._to_check), set()
        for i in range(0, len(ids), MAX_BATCH):
            task = asyncio.ensure_future(self._fetch(ids[i : i + MAX_BATCH]))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _fetch(self, ids: list[str]) -> None:
        q = self._queue
        first = [i for i in ids if i in self._first]
        self._first.difference_update(first)
        missing: set[str] = set()
        try:
            if first:  # in one step: a job finishing meanwhile is found in one place or the other
                keys = [q.keys.jobs, *(q.keys.result(i) for i in ids)]
                found = await call_redis(q.scripts.call("outcomes", keys, ids), q.redis_url)
                datas = [f if isinstance(f, bytes) else None for f in found]
                missing = {i for i, f in zip(ids, found, strict=True) if f == 0}
            else:
                datas = await call_redis(q.redis.mget([q.keys.result(i) for i in ids]), q.redis_url)
        except Exception as exc:
            for i in ids:
                for fut in self._waiters.get(i, ()):
                    if not fut.done():
                        fut.set_exception(exc)
            return
        for i, data in zip(ids, datas, strict=True):
            for fut in self._waiters.get(i, ()):
                if fut.done():
                    continue
                if data is not None:
                    fut.set_result(bytes(data))
                elif i in missing and i in first:
                    fut.set_exception(JobNotFound(f"no job {i} in queue {q.name!r}"))

    async def _listen(self) -> None:
        q = self._queue
        delay = 0.05
        while True:
            client = q._make_client(socket_timeout=15.0, retries=0)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(q.keys.done_channel)
                self._epoch += 1
                self._recent.clear()
                self._subscribed.set()
                delay = 0.05
                self._first.update(self._waiters)
                self._check(list(self._waiters))  # messages may have been missed: check all
                idle = 0.0
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is None:
                        idle += 5.0
                        if idle >= 10.0:
                            await pubsub.ping()  # find a silently dead link
                            idle = 0.0
                        continue
                    idle = 0.0
                    if msg.get("type") == "message":
                        self._check(_str(msg["data"]).split(), finished=True)
            except (rex.ConnectionError, rex.TimeoutError, OSError):
                self._subscribed.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def close(self) -> None:
        for task in [self._task, *self._checks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
