"""Per-submit options, one job's arguments in a bulk submit, and the submitter that applies them."""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypedDict, TypeVar, Unpack, overload

import msgspec

from .errors import InvalidOptions

if TYPE_CHECKING:
    from .job import Job
    from .queue import Queue

__all__ = ("Call", "OptionsKwargs", "Options", "Submits", "Submitter", "make_options")

P = ParamSpec("P")
R = TypeVar("R")

PRIORITY_RANGE = 1_000_000
MAX_KEY_LENGTH = 512

#: One job's positional arguments, keyword arguments and options, as the submit path takes them.
Spec = tuple[tuple[Any, ...], dict[str, Any], "Options"]


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """Per-submit options, kept apart from the task's own keyword arguments.

    :ivar key: de-duplication key: while a job with this key exists, or within the result TTL
        after it finished, a submit with the same key returns a handle to that original job.
    :ivar delay: seconds to wait before the job may run.
    :ivar priority: higher runs first (default 0); jobs of one priority run in submit order.
    :ivar timeout: seconds an attempt may run (overrides the task's).
    :ivar retries: attempts after the first (overrides the task's).
    :ivar result_ttl: seconds the result is kept (overrides the queue's).
    :ivar expires: seconds after the submit (the producer's clock) past which the job is not
        started: a worker that claims it later records it cancelled, with the reason.
    :ivar block: when the queue has a ``max_pending`` bound and is full, wait for room (the
        default), or raise :class:`~aioqueue.errors.QueueFull` at once.
    :ivar after: ids of jobs (of the same queue) this one runs after: it starts once they have
        all finished, with the one's result (or the list of their results) as its first
        argument; if one of them failed or was cancelled, it is recorded cancelled, unrun.
    :ivar group: per-key concurrency: at most ``group_limit`` jobs of the group (say a
        customer id) are let into pending or run at once, across all workers; the others wait
        in Redis in submit order (so with a limit of 1 a key's jobs run one by one, in order).
    :ivar group_limit: the group's limit (default 1).
    :ivar rate: ``(count, seconds)``: at most ``count`` jobs of ``rate_key`` start in any
        ``seconds``, across all workers (spaced out evenly after a burst); a job over the rate
        waits in Redis for its moment, unclaimed.
    :ivar rate_key: what the rate counts (default: the task).
    :ivar debounce: seconds, with ``key``: the job starts that long after the last submit with
        its key; each submit before it starts gives it the newest arguments and moves its start
        on (one run per burst, with the last arguments); a submit once it started makes a new
        job.
    """

    key: str | None = None
    delay: float = 0.0
    priority: int = 0
    timeout: float | None = None
    retries: int | None = None
    result_ttl: float | None = None
    expires: float | None = None
    block: bool = True
    after: tuple[str, ...] = ()
    group: str | None = None
    group_limit: int = 1
    rate: tuple[int, float] | None = None
    rate_key: str | None = None
    debounce: float | None = None

    def validate(self) -> None:
        """:raises InvalidOptions: naming the first option out of range."""
        if self.key is not None and (
            not isinstance(self.key, str) or not 0 < len(self.key) <= MAX_KEY_LENGTH
        ):
            raise InvalidOptions(
                f"key must be a non-empty str of at most {MAX_KEY_LENGTH} chars: {self.key!r}"
            )
        if not _number(self.delay) or not 0 <= self.delay < 10**9:
            raise InvalidOptions(f"delay must be >= 0 seconds, got {self.delay!r}")
        if type(self.priority) is not int or abs(self.priority) > PRIORITY_RANGE:
            raise InvalidOptions(
                f"priority must be an int within ±{PRIORITY_RANGE}, got {self.priority!r}"
            )
        if self.timeout is not None and (
            not _number(self.timeout) or not 0 < self.timeout < math.inf
        ):
            raise InvalidOptions(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.retries is not None and (type(self.retries) is not int or self.retries < 0):
            raise InvalidOptions(f"retries must be an int >= 0, got {self.retries!r}")
        if self.result_ttl is not None and (
            not _number(self.result_ttl) or not self.result_ttl > 0
        ):
            raise InvalidOptions(f"result_ttl must be > 0 seconds, got {self.result_ttl!r}")
        if self.expires is not None and (not _number(self.expires) or not self.expires > 0):
            raise InvalidOptions(f"expires must be > 0 seconds, got {self.expires!r}")
        if not all(isinstance(p, str) and p for p in self.after) or len(self.after) > 1000:
            raise InvalidOptions(f"after must name at most 1,000 jobs by id, got {self.after!r}")
        if self.group is not None and (
            not isinstance(self.group, str) or not 0 < len(self.group) <= MAX_KEY_LENGTH
        ):
            raise InvalidOptions(
                f"group must be a non-empty str of at most {MAX_KEY_LENGTH} chars: {self.group!r}"
            )
        if type(self.group_limit) is not int or self.group_limit < 1:
            raise InvalidOptions(f"group_limit must be an int >= 1, got {self.group_limit!r}")
        check_rate(self.rate)
        if self.debounce is not None:
            if not _number(self.debounce) or not 0 < self.debounce < 10**9:
                raise InvalidOptions(f"debounce must be > 0 seconds, got {self.debounce!r}")
            if self.key is None or self.delay:
                raise InvalidOptions("debounce needs a key (what it debounces), and no delay")
        if self.rate_key is not None and (
            not isinstance(self.rate_key, str) or not 0 < len(self.rate_key) <= MAX_KEY_LENGTH
        ):
            raise InvalidOptions(
                f"rate_key must be a non-empty str of at most {MAX_KEY_LENGTH} chars: "
                f"{self.rate_key!r}"
            )
        if self.group is not None and self.after:
            raise InvalidOptions("a job can't both run after others and belong to a group")


class OptionsKwargs(TypedDict, total=False):
    """The keywords of ``queue.options(...)`` and ``queue.sync.options(...)``: the fields of
    :class:`Options`, with ``after`` taking jobs as well as their ids."""

    key: str | None
    delay: float
    priority: int
    timeout: float | None
    retries: int | None
    result_ttl: float | None
    expires: float | None
    block: bool
    after: Job[Any] | str | Sequence[Job[Any] | str]
    group: str | None
    group_limit: int
    rate: tuple[int, float] | None
    rate_key: str | None
    debounce: float | None


def make_options(**kwargs: Unpack[OptionsKwargs]) -> Options:
    """The :class:`Options` of these keywords (``after``: jobs or ids, one or several)."""
    after = kwargs.get("after", ())
    parents = [after] if isinstance(after, str) or hasattr(after, "id") else list(after)
    fields: dict[str, Any] = {k: v for k, v in kwargs.items() if k != "after"}
    return Options(**fields, after=tuple(p if isinstance(p, str) else p.id for p in parents))


def check_rate(rate: object) -> None:
    """:raises InvalidOptions: ``rate`` is not None nor ``(count >= 1, seconds > 0)``."""
    if rate is None:
        return
    if not (
        isinstance(rate, tuple)
        and len(rate) == 2
        and type(rate[0]) is int
        and rate[0] >= 1
        and _number(rate[1])
        and 0 < rate[1] < 10**9
    ):
        raise InvalidOptions(f"rate must be (count >= 1, seconds > 0), got {rate!r}")


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


NO_OPTIONS = Options()


class Call:
    """Arguments of one job in :meth:`Queue.submit_many`: ``Call(*args, **kwargs)``."""

    __slots__ = ("args", "kwargs", "options")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.options = NO_OPTIONS

    def with_options(self, options: Options) -> Call:
        """Give this one job its own options."""
        self.options = options
        return self


def specs(calls: Iterable[tuple[Any, ...] | Call], options: Options) -> list[Spec]:
    """Each call's arguments with its options (its own, else ``options``).

    :raises InvalidOptions: an item is neither a tuple nor a :class:`Call`.
    """
    out: list[Spec] = []
    for c in calls:
        if isinstance(c, Call):
            out.append((c.args, c.kwargs, options if c.options is NO_OPTIONS else c.options))
        elif isinstance(c, tuple):
            out.append((c, {}, options))
        else:
            raise InvalidOptions(f"submit_many takes tuples of arguments or Call(...), got {c!r}")
    return out


class Submits:
    """``submit``, ``submit_many`` and ``map``, shared by :class:`~aioqueue.Queue` (no options)
    and :class:`Submitter` (its options)."""

    __slots__ = ()

    def map(
        self,
        fn: Callable[..., R] | str,
        inputs: Iterable[Any] | AsyncIterable[Any],
        *,
        window: int = 1000,
        return_exceptions: bool = False,
    ) -> AsyncIterator[R]:
        """Run ``fn`` on each input (one argument each, or a :class:`Call`) and yield the
        results as they complete: ``async for r in queue.map(render, pages): ...``.

        Inputs are read lazily, and at most ``window`` jobs are submitted and unfinished at a
        time, so memory stays bounded however many inputs there are, and a fast producer waits
        for the workers. A failed job raises its :class:`~aioqueue.JobFailed` (the others go
        on running), or is yielded as the exception with ``return_exceptions=True``.
        """
        from .mapping import map_jobs

        return map_jobs(self, fn, inputs, window, return_exceptions)

    def _target(self) -> tuple[Queue, Options]:
        raise NotImplementedError

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
        queue, options = self._target()
        return (await queue._submit(fn, [(args, kwargs, options)]))[0]

    @overload
    async def submit_many(
        self,
        fn: Callable[..., Coroutine[Any, Any, R]],
        calls: Iterable[tuple[Any, ...] | Call],
    ) -> list[Job[R]]: ...
    @overload
    async def submit_many(
        self, fn: Callable[..., R], calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[Job[R]]: ...
    @overload
    async def submit_many(
        self, fn: str, calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[Job[Any]]: ...
    async def submit_many(
        self, fn: Callable[..., Any] | str, calls: Iterable[tuple[Any, ...] | Call]
    ) -> list[Job[Any]]:
        """Submit many jobs of one task in few round trips: ``calls`` holds a tuple of positional
        arguments, or a :class:`Call`, per job. Every job is checked before any is written.
        """
        queue, options = self._target()
        return await queue._submit(fn, specs(calls, options))


class Submitter(Submits):
    """Submits with fixed options: ``queue.options(key=..., delay=...).submit(fn, ...)``.

    Returned by :meth:`Queue.options`; the options are checked when it is made.
    """

    __slots__ = ("_queue", "options")

    def __init__(self, queue: Queue, options: Options) -> None:
        options.validate()
        self._queue = queue
        #: the options every submit through this submitter carries.
        self.options = options

    def __repr__(self) -> str:
        return f"Submitter({self._queue!r}, {self.options!r})"

    def _target(self) -> tuple[Queue, Options]:
        return self._queue, self.options
