"""Blocking producers for synchronous code: ``queue.sync`` runs the async API on one loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack, overload

from .errors import AioqueueError, BlockingCallInLoop
from .info import DeadLetter, QueueInfo
from .job import Job, JobStatus
from .options import NO_OPTIONS, Call, Options, OptionsKwargs, Spec, make_options, specs
from .wire import Progress

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ("SyncJob", "SyncQueue", "SyncSubmits", "SyncSubmitter")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _refuse_in_loop(call: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise BlockingCallInLoop(
        f"{call} blocks, and this thread runs an event loop: "
        f"await the async API here instead (await {call.replace('.sync', '')})"
    )


def _clone(queue: Queue) -> Queue:
    """A Queue with ``queue``'s name, URL and settings as they are now, sharing its tasks (those
    registered later too), with connections, submit coalescing and result waiting of its own."""
    params = inspect.signature(type(queue)).parameters
    twin = type(queue)(**{p: getattr(queue, p) for p in params})
    twin.tasks = queue.tasks
    twin._by_fn = queue._by_fn
    return twin


class _LoopThread:
    """One event loop on a daemon thread, and the private Queue whose I/O runs on it."""

    def __init__(self, queue: Queue) -> None:
        self.queue = _clone(queue)
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._run, name=f"aioqueue-sync-{queue.name}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Close the Queue's connections on the loop (submits under way finish first), cancel
        the calls still waiting, stop the loop and join the thread."""
        try:
            with contextlib.suppress(Exception):
                self.submit(self.queue.aclose()).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()


class SyncJob(Generic[R]):
    """A blocking handle to a submitted job, from :attr:`Queue.sync`: ``job.result()``.

    :ivar id: the job's id; ``queue.sync.job(id)`` (or ``queue.job(id)`` in async code) makes
        a handle to it in any process.
    :ivar created: False when a de-duplication key matched an earlier job, which this handle
        points to.
    """

    __slots__ = ("id", "created", "_sync", "_job")

    def __init__(self, sync: SyncQueue, job: Job[R]) -> None:
        self.id = job.id
        self.created = job.created
        self._sync = sync
        self._job = job

    def __repr__(self) -> str:
        return f"SyncJob({self.id!r}, queue={self._sync.queue.name!r})"

    def _on(self, queue: Queue) -> Job[R]:
        """The async handle bound to the loop thread's Queue (a new one after a restart)."""
        if self._job.queue is not queue:
            self._job = Job(queue, self.id, self._job._rtype, self._job.created)
        return self._job

    def result(self, timeout: float | None = None) -> R:
        """Block until the job finishes and return its value; can be called again.

        Raises what :meth:`aioqueue.Job.result` raises, in the calling thread.

        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises ResultTimeout: ``timeout`` passed first; the job goes on.
        """
        return self._sync._call("job.result()", lambda q: self._on(q).result(timeout))

    def status(self) -> JobStatus:
        """Where the job is now."""
        return self._sync._call("job.status()", lambda q: self._on(q).status())

    def last_progress(self) -> Progress | None:
        """The last progress report of a job that waits or runs; as
        :meth:`aioqueue.Job.last_progress`."""
        return self._sync._call("job.last_progress()", lambda q: self._on(q).last_progress())

    def cancel(self) -> bool:
        """Cancel the job: it never runs if it has not started, and is stopped (its child
        killed, no retry) if it runs; True if it is cancelled (by this call or an earlier one),
        False if it finished otherwise or is unknown (see :meth:`aioqueue.Queue.cancel`)."""
        return self._sync._call("job.cancel()", lambda q: self._on(q).cancel())


class SyncSubmits:
    """Blocking ``submit`` and ``submit_many``, shared by :class:`SyncQueue` (no options) and
    :class:`SyncSubmitter` (its options)."""

    __slots__ = ()

    def _target(self) -> tuple[SyncQueue, Options]:
        raise NotImplementedError

    @overload
    def submit(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> SyncJob[R]: ...
    @overload
    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> SyncJob[R]: ...
    @overload
    def submit(self, fn: str, *args: Any, **kwargs: Any) -> SyncJob[Any]: ...
    def submit(self, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> SyncJob[Any]:
        """Submit one job; returns once the job is durably in Redis. As
        :meth:`aioqueue.Queue.submit`, whose errors it raises in the calling thread."""
        sync, options = self._target()
        return sync._submit("queue.sync.submit()", fn, [(args, kwargs, options)])[0]

    @overload
    def submit_many(
        self,
        fn: Callable[..., Coroutine[Any, Any, R]],
        calls: Iterable[tuple[Any, ...] | Call],
    ) -> list[SyncJob[R]]: ...
    @overload
    def submit_many(
        self, fn: Callable[..., R], calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[SyncJob[R]]: ...
    @overload
    def submit_many(
        self, fn: str, calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[SyncJob[Any]]: ...
    def submit_many(
        self, fn: Callable[..., Any] | str, calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[SyncJob[Any]]:
        """Submit many jobs of one task in few round trips; as
        :meth:`aioqueue.Queue.submit_many`."""
        sync, options = self._target()
        return sync._submit("queue.sync.submit_many()", fn, specs(calls, options))


class SyncSubmitter(SyncSubmits):
    """Blocking submits with fixed options: ``queue.sync.options(key=...).submit(fn, ...)``."""

    __slots__ = ("_sync", "options")

    def __init__(self, sync: SyncQueue, options: Options) -> None:
        options.validate()
        self._sync = sync
        #: the options every submit through this submitter carries.
        self.options = options

    def __repr__(self) -> str:
        return f"SyncSubmitter({self._sync.queue!r}, {self.options!r})"

    def _target(self) -> tuple[SyncQueue, Options]:
        return self._sync, self.options


class SyncQueue(SyncSubmits):
    """Blocking calls to a :class:`~aioqueue.Queue` for synchronous code (WSGI views, threads,
    scripts): ``queue.sync.submit(render, 40).result(timeout=10)``. Get it as ``queue.sync``.

    Safe to call from any number of threads at once. The first call starts one daemon thread
    running one event loop; every call hands its coroutine to that loop and blocks on the
    answer, so threads share one connection pool, one result subscription, and submits made
    at the same moment travel together in one round trip. Errors are aioqueue's typed errors,
    raised in the calling thread; a ``KeyboardInterrupt`` while waiting cancels that call only.

    The loop thread works through a private clone of the queue (same name, URL and settings
    as at the first call, the same registered tasks), never through the queue itself, so an
    app may also ``await queue.submit(...)`` on its own event loop at the same time.

    A blocking call from a thread that runs an event loop raises :class:`BlockingCallInLoop`
    (it would stall that loop). :meth:`close` stops the thread; a later call starts a new one,
    as does the first call in a forked child process.
    """

    __slots__ = ("queue", "_lock", "_runner")

    def __init__(self, queue: Queue) -> None:
        #: the queue this handle submits to.
        self.queue = queue
        self._lock = threading.Lock()
        self._runner: _LoopThread | None = None

    def __repr__(self) -> str:
        return f"SyncQueue({self.queue.name!r})"

    def _target(self) -> tuple[SyncQueue, Options]:
        return self, NO_OPTIONS

    def _call(self, what: str, make: Callable[[Queue], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine ``make`` builds for the loop thread's Queue, there; its result.

        :raises BlockingCallInLoop: called from a thread running an event loop.
        :raises AioqueueError: :meth:`close` ended the call before it finished.
        """
        _refuse_in_loop(what)
        with self._lock:  # no call is handed to a loop that close() is stopping
            runner = self._runner
            if runner is None or runner.pid != os.getpid():
                runner = self._runner = _LoopThread(self.queue)
            fut = runner.submit(make(runner.queue))
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise AioqueueError(f"{what}: {self!r} was closed while the call waited") from None
        except BaseException:
            fut.cancel()  # KeyboardInterrupt and the like: the loop drops this call, goes on
            raise

    def _submit(
        self, what: str, fn: Callable[..., Any] | str, calls: Sequence[Spec]
    ) -> list[SyncJob[Any]]:
        jobs = self._call(what, lambda q: q._submit(fn, calls))
        return [SyncJob(self, job) for job in jobs]

    def options(self, **kwargs: Unpack[OptionsKwargs]) -> SyncSubmitter:
        """Submit with options, as :meth:`aioqueue.Queue.options` (the same keywords).

        :raises InvalidOptions: naming the option out of range.
        """
        return SyncSubmitter(self, make_options(**kwargs))

    def job(self, job_id: str, result_type: Any = Any) -> SyncJob[Any]:
        """A handle to a job known only by its id (for example, from another process)."""
        return SyncJob(self, Job(self.queue, job_id, result_type))

    def cancel(self, job_ids: Sequence[str]) -> list[bool]:
        """Cancel jobs, running ones too; as :meth:`aioqueue.Queue.cancel`."""
        return self._call("queue.sync.cancel()", lambda q: q.cancel(job_ids))

    def cancel_where(self, *, task: str | None = None, key: str | None = None) -> list[str]:
        """Cancel every unfinished job of a task and/or key; as
        :meth:`aioqueue.Queue.cancel_where`."""
        return self._call("queue.sync.cancel_where()", lambda q: q.cancel_where(task=task, key=key))

    def info(self) -> QueueInfo:
        """Counts of jobs and workers and lifetime counters; as :meth:`aioqueue.Queue.info`."""
        return self._call("queue.sync.info()", lambda q: q.info())

    def pause(self) -> None:
        """Stop workers claiming the queue's jobs; as :meth:`aioqueue.Queue.pause`."""
        self._call("queue.sync.pause()", lambda q: q.pause())

    def resume(self) -> None:
        """Let workers claim the queue's jobs again; as :meth:`aioqueue.Queue.resume`."""
        self._call("queue.sync.resume()", lambda q: q.resume())

    def paused(self) -> bool:
        """Whether the queue is paused."""
        return self._call("queue.sync.paused()", lambda q: q.paused())

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead-lettered jobs, with every attempt's error."""
        return self._call("queue.sync.dead_letters()", lambda q: q.dead_letters(limit))

    def requeue_dead(self, job_ids: Sequence[str]) -> int:
        """Move dead-lettered jobs back to pending; returns how many moved."""
        return self._call("queue.sync.requeue_dead()", lambda q: q.requeue_dead(job_ids))

    def purge_dead(self, job_ids: Sequence[str]) -> int:
        """Delete dead-lettered jobs for good; returns how many were purged."""
        return self._call("queue.sync.purge_dead()", lambda q: q.purge_dead(job_ids))

    def close(self) -> None:
        """Close the connections and stop the loop thread (submits under way finish first;
        calls still waiting for a result raise :class:`~aioqueue.AioqueueError`). The handle
        stays usable: the next call starts a new thread.

        :raises BlockingCallInLoop: called from a thread running an event loop.
        """
        _refuse_in_loop("queue.sync.close()")
        with self._lock:
            runner, self._runner = self._runner, None
            if runner is not None and runner.pid == os.getpid():
                runner.stop()
