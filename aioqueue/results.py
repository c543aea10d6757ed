"""Waiting for outcomes: one pub/sub subscription per queue, batched fetches, a polling fallback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from redis import exceptions as rex
from redis.asyncio.client import PubSub

from ._link import Messages, direct
from ._redis import as_error, call_redis
from ._redis import to_str as _str
from .connect import TRANSIENT
from .errors import JobNotFound
from .urls import safe_url

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ("Results",)

logger = logging.getLogger(__name__)

MAX_BATCH = 1000  # ids fetched per round trip
RECENT_FINISHED = 10_000  # finished ids remembered for waits that come after the message
POLL_INTERVAL = 0.25  # seconds between checks of all waited-for ids when subscribing is refused
SUBSCRIBE_TIMEOUT = 10.0  # seconds to wait for Redis to confirm a SUBSCRIBE
IDLE_PING = 10.0  # seconds without a message before the link is checked with a PING
LISTEN_TIMEOUT = 5.0  # seconds one read of the subscription waits; silence is counted in these
_REFUSED_CREDENTIALS = (rex.AuthenticationError, rex.AuthorizationError)


class Results:
    """Waits for jobs' outcomes on behalf of every local waiter of one queue.

    One pub/sub subscription to the queue's done channel wakes all waiters: no polling, no
    connection per job. Finished ids are fetched in one round trip per batch. After each
    (re)subscribe all waiters are checked again, so a message missed while the link was down
    costs nothing. Where Redis refuses the subscription (an ACL user without ``+subscribe`` or
    channel access), every waited-for id is checked every :data:`POLL_INTERVAL` seconds in one
    round trip instead, and a warning is logged once. Any other error ends the wait of every
    waiter with aioqueue's error for it; the next wait starts over.
    """

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._waiters: dict[str, list[asyncio.Future[bytes]]] = {}
        self._to_check: set[str] = set()
        self._first: set[str] = set()  # ids not checked yet: unknown ones raise JobNotFound
        self._task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._live = False  # subscribed: every finish from now on is seen
        self._polling = False  # subscribing was refused: waiters are checked on an interval
        self._warned = False
        self._epoch = 0  # bumped at each (re)subscribe
        self._recent: OrderedDict[str, None] = OrderedDict()  # finished ids nobody waited for
        self._room = asyncio.Event()  # set (and replaced) when a claim makes room

    @property
    def mode(self) -> str:
        """``"subscribed"``, ``"polling"`` (subscribing refused) or ``"down"``."""
        return "subscribed" if self._live else "polling" if self._polling else "down"

    def live_epoch(self) -> int | None:
        """The subscription's epoch if it is live now (a job submitted now can't be missed)."""
        return self._epoch if self._live else None

    async def wait(self, job_id: str, epoch: int | None = None) -> bytes:
        """Wait for a job's outcome and return its bytes.

        :param epoch: the live epoch when the job was submitted; while the subscription is
            still that one, the job's finish can't have been missed, so no check is needed
            unless its message came before this wait.
        :raises JobNotFound: the queue has no such job.
        :raises AioqueueError: Redis can't be read (its subclass names the cause).
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen())
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        if self._live or self._polling:
            seen = self._live and epoch is not None and epoch == self._epoch
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
                self._remember(i)
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
                found = await q._outcomes(ids)
                datas = [f if isinstance(f, bytes) else None for f in found]
                missing = {i for i, f in zip(ids, found, strict=True) if f == 0}
            else:
                datas = await call_redis(q.redis.mget([q.keys.result(i) for i in ids]), q.redis_url)
        except Exception as exc:
            if self._polling and _retryable(exc):
                self._first.update(first)  # the next check asks again
                return
            self._fail(ids, as_error(exc, q.redis_url))
            return
        for i, data in zip(ids, datas, strict=True):
            for fut in self._waiters.get(i, ()):
                if fut.done():
                    continue
                if data is not None:
                    fut.set_result(bytes(data))
                elif i in missing and i in first:
                    fut.set_exception(JobNotFound(f"no job {i} in queue {q.name!r}"))

    def _fail(self, ids: Iterable[str], exc: Exception) -> None:
        for i in list(ids):
            for fut in self._waiters.get(i, ()):
                if not fut.done():
                    fut.set_exception(exc)

    async def _listen(self) -> None:
        q = self._queue
        try:
            if await self._subscribe_and_receive():
                await self._poll()
        except Exception as exc:
            self._live = self._polling = False
            self._fail(list(self._waiters), as_error(exc, q.redis_url))

    async def _subscribe_and_receive(self) -> bool:
        """Subscribe and hand finish messages to the waiters, resubscribing after a lost link;
        return True if Redis refuses the subscription."""
        q = self._queue
        delay = 0.05
        while True:
            client = q._make_client(socket_timeout=15.0, retries=0)
            pubsub = client.pubsub()
            try:
                try:
                    await self._subscribe(pubsub)
                except rex.ResponseError as exc:  # NOPERM, or a server without pub/sub
                    self._warn_refused(exc)
                    return True
                self._went_live()
                delay = 0.05
                await self._receive(pubsub)
            except _REFUSED_CREDENTIALS:
                raise
            except TRANSIENT:
                self._live = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                self._live = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Subscribe to the done channel and wait until Redis confirms it."""
        await pubsub.subscribe(self._queue.keys.done_channel)
        while True:
            msg = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT)
            if msg is None:
                raise rex.TimeoutError(f"no reply to SUBSCRIBE in {SUBSCRIBE_TIMEOUT} s")
            if msg.get("type") == "subscribe":
                return

    def _went_live(self) -> None:
        self._epoch += 1
        self._recent.clear()
        self._live = True
        self._first.update(self._waiters)
        self._check(list(self._waiters))  # messages may have been missed: check all

    async def _receive(self, pubsub: PubSub) -> None:
        """Hand each message to :meth:`_finished`; PING the link after :data:`IDLE_PING`
        seconds of silence. Where the connection reads through hiredis, messages are read
        straight from it (redis-py's ``get_message`` costs more than the rest of a result's
        wait, per message)."""
        conn = pubsub.connection
        messages = Messages(conn) if conn is not None and direct(conn) else None
        idle = 0.0
        while True:
            if messages is not None:  # hiredis's list; a PING's answer counts: the link is alive
                raw = await messages.next(LISTEN_TIMEOUT)
                heard = raw is not None
                is_message = isinstance(raw, list) and len(raw) == 3 and raw[0] == b"message"
                data = raw[2] if is_message else None
            else:
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=LISTEN_TIMEOUT
                )
                heard = msg is not None
                data = msg["data"] if msg is not None and msg.get("type") == "message" else None
            if not heard:
                idle += LISTEN_TIMEOUT
                if idle >= IDLE_PING:
                    await pubsub.ping()  # find a silently dead link
                    idle = 0.0
                continue
            idle = 0.0
            if data is not None:
                self._finished(data)

    def room(self) -> asyncio.Event:
        """An event set when a claim next makes room in a full queue (the listener is started
        if it isn't; until it subscribes, a claim's message is missed: wait with a timeout)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen())
        return self._room

    def _finished(self, data: bytes | str) -> None:
        """A finish announcement: outcomes that travel in it go to their waiters at once; the
        other ids are read in one round trip (with any others of this turn of the loop). The
        one byte 2 says a claim made room in a full queue."""
        if data == b"\x02":
            self._room.set()
            self._room = asyncio.Event()
            return
        try:
            jobs = parse_announcement(data)
        except ValueError as exc:
            logger.warning(
                "ignored a malformed message on %s: %s", self._queue.keys.done_channel, exc
            )
            return
        unread = []
        for job_id, outcome in jobs:
            if outcome is None:
                unread.append(job_id)
                continue
            futs = self._waiters.get(job_id)
            if futs is None:
                self._remember(job_id)
                continue
            self._first.discard(job_id)
            for fut in futs:
                if not fut.done():
                    fut.set_result(outcome)
        if unread:
            self._check(unread, finished=True)

    def _remember(self, job_id: str) -> None:
        """A finished job nobody waits for yet: a wait that comes later reads it."""
        self._recent[job_id] = None
        if len(self._recent) > RECENT_FINISHED:
            self._recent.clear()
            self._epoch += 1  # forgotten finishes: jobs submitted before must check

    def _warn_refused(self, exc: Exception) -> None:
        if self._warned:
            return
        self._warned = True
        q = self._queue
        logger.warning(
            "Redis at %s refused to SUBSCRIBE to %s (%s): checking awaited jobs every %.2g s "
            "instead; allow the user SUBSCRIBE on that channel for prompt results",
            safe_url(q.redis_url),
            q.keys.done_channel,
            exc,
            POLL_INTERVAL,
        )

    async def _poll(self) -> None:
        """Check every waited-for id on an interval, in one round trip per check."""
        self._polling = True
        self._epoch += 1
        self._first.update(self._waiters)
        self._check(list(self._waiters))
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self._waiters and not self._checks and not self._to_check:
                self._check(list(self._waiters))

    async def close(self) -> None:
        """Stop listening; waiters still waiting wait for the next listener."""
        for task in [self._task, *self._checks]:
            # A cancel that lands as a read's own timeout fires can be taken for that timeout
            # and swallowed; cancel again until the task has ended.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
        self._task = None
        self._live = self._polling = False


def parse_announcement(data: bytes | str) -> list[tuple[str, bytes | None]]:
    """The jobs of a finish announcement (lua/_announce.lua): per job its id and its outcome's
    bytes, or None when the outcome was too large to travel (read it by id). A message of ids
    separated by spaces, as earlier versions sent, gives ids with None.

    :raises ValueError: the message is cut short.
    """
    if isinstance(data, str) or not data.startswith(b"\x01"):
        return [(i, None) for i in _str(data).split()]
    out: list[tuple[str, bytes | None]] = []
    i, n = 1, len(data)
    while i < n:
        k = data[i]
        job_id = data[i + 1 : i + 1 + k].decode()
        i += 1 + k
        if i + 4 > n:
            raise ValueError(f"announcement cut short after job {job_id!r}")
        (m,) = struct.unpack_from(">I", data, i)
        i += 4
        if i + m > n:
            raise ValueError(f"announcement cut short in job {job_id!r}'s outcome")
        out.append((job_id, bytes(data[i : i + m]) if m else None))
        i += m
    return out


def _retryable(exc: Exception) -> bool:
    """True if a failed check can simply be made again: the link was lost, not refused."""
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    return isinstance(cause, TRANSIENT) and not isinstance(cause, _REFUSED_CREDENTIALS)
