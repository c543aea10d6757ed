"""A connection held by one loop of the worker for its hot path: claims, outcomes, waits.

redis-py's ``execute_command`` takes a connection from the pool for each call, encodes each
argument in Python, wraps the call in its retry machinery and gives the connection back: about
70 µs of CPU per call on the project's 2-core VM (111 against 43 µs for the same 55-argument
``EVALSHA``, measured under uvloop). A :class:`Link` keeps one of the pool's connections (so
TLS, ACL users, Sentinel's master and the database are redis-py's business as before), packs a
whole command in one call to hiredis, and reads the reply. After a lost link a command is sent
once more on a new connection, as the client's own retry would; beyond that, retries are the
caller's, who re-sends under the same receipt.

A call that fails on the link, or is cancelled, drops the connection: a reply still on its way
can never be read as the answer to another call. An error reply leaves it in place. A
producer's submits, which may overlap, take a link each from :class:`Links`.

Where the connection reads through hiredis (the default), a call writes to its stream and
feeds what it reads to the connection's own hiredis reader, within the client's
``socket_timeout``: redis-py's ``send_packed_command`` and ``read_response`` wrap each side in a
timeout of its own (the send in ``asyncio.wait_for``, a new task per call), which cost more than
the exchange itself at one job per round trip. A link keeps one timer for that timeout
(:class:`Watch`), not one per call: ``asyncio.timeout`` arms and cancels a timer per call, 12
of the 84-88 µs of CPU that one awaited submit took on asyncio's own loop.

A RESP3 push message (client-side caching's, say) that comes before the reply is skipped, as
the connection's own reader would pass it to a handler this connection does not have. A
connection with the pure-Python parser goes through redis-py's calls as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
import hiredis
from redis import exceptions as rex
from redis._parsers import hiredis as _hiredis_parser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ("Link", "Links", "Messages", "Watch", "direct", "pack")


def _pool(redis: Redis) -> ConnectionPool | None:
    """The client's one pool of connections (None for a cluster's client)."""
    pool = getattr(redis, "connection_pool", None)
    return pool if isinstance(pool, ConnectionPool) else None


_NOT_ENOUGH_DATA = getattr(_hiredis_parser, "NOT_ENOUGH_DATA", False)
_HiredisParser = getattr(_hiredis_parser, "_AsyncHiredisParser", None)
_Push: Any = getattr(hiredis, "PushNotification", ())  # RESP3's out-of-band messages
_READ_SIZE = 65536
_WRITE_HIGH = 65536  # bytes waiting in the socket's buffer before a call waits for them to go


def direct(conn: AbstractConnection) -> bool:
    """May calls on ``conn`` go straight to its stream and its hiredis reader?"""
    parser = getattr(conn, "_parser", None)
    return (
        _HiredisParser is not None
        and isinstance(parser, _HiredisParser)
        and getattr(parser, "_reader", None) is not None
        and getattr(conn, "_writer", None) is not None
        and getattr(conn, "_reader", None) is not None
    )


def _write(conn: Any, command: bytes, before: bytes | None) -> bool:
    """Write ``command`` (``before`` it, that one) to ``conn``'s stream; True if the socket's
    buffer is so full that the caller should wait for it to drain."""
    writer = conn._writer
    writer.write(command if before is None else before + command)
    return bool(writer.transport.get_write_buffer_size() > _WRITE_HIGH)


def _check(first: Any, reply: Any) -> Any:
    """``reply``, or the error reply of either (both were read)."""
    for r in (first, reply):
        if isinstance(r, rex.ResponseError):
            raise r
    return reply


async def _read(conn: Any, push: Any = _Push) -> Any:
    """Read one reply from ``conn`` (through hiredis), skipping RESP3 push messages (``push``:
    their type, or ``()`` to return them); an error reply is returned, not raised."""
    reader = conn._parser._reader
    stream = conn._reader
    reply = reader.gets()
    while reply is _NOT_ENOUGH_DATA or isinstance(reply, push):
        if reply is _NOT_ENOUGH_DATA:
            data = await stream.read(_READ_SIZE)
            if not data:
                raise rex.ConnectionError("Connection closed by server.")
            reader.feed(data)
        reply = reader.gets()
    if isinstance(reply, rex.ConnectionError):
        raise reply
    return reply


async def _through(conn: AbstractConnection, command: bytes, before: bytes | None) -> Any:
    """A call through redis-py's own sending and reading (a connection without hiredis)."""
    if before is not None:
        await conn.send_packed_command(before + command, check_health=False)
        try:
            await conn.read_response()
        except rex.ResponseError:
            await conn.read_response()
            raise
    else:
        await conn.send_packed_command(command, check_health=False)
    return await conn.read_response()


class Messages:
    """The messages of a subscribed connection (one for which :func:`direct` is true), read
    with one timer for all the waits (see :class:`Watch`)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.watch = Watch()

    async def next(self, timeout: float) -> Any:
        """The next message as hiredis gives it (``[b"message", channel, data]`` and the
        like); None after ``timeout`` seconds of silence. What was read of a message cut short
        stays in the reader."""
        watch = self.watch
        watch.begin(timeout)
        try:  # in RESP3, the messages are pushes
            return await _read(self.conn, ())
        except asyncio.CancelledError:
            if watch.expired():
                return None
            raise
        finally:
            watch.task = None


class Watch:
    """Deadlines for one wait at a time (a link's calls, a subscription's reads), on one timer.

    Each wait sets its deadline (:meth:`begin`); the timer, armed for a deadline, finds the wait
    then in progress, cancels it if it is past its own deadline, and otherwise re-arms for it.
    With waits far shorter than the timeout it fires once per timeout, whatever their number.
    """

    __slots__ = ("deadline", "fired", "task", "timer")

    def __init__(self) -> None:
        self.deadline = 0.0
        self.task: asyncio.Task[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.fired = False  # the wait in progress was cancelled for its deadline

    def begin(self, timeout: float) -> None:
        """A wait of the current task starts: it may last ``timeout`` seconds. The waiter
        clears :attr:`task` when done, and on a cancellation asks :meth:`expired`."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + timeout
        self.task = asyncio.current_task()
        self.fired = False
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self._check, loop)

    def expired(self) -> bool:
        """Was the cancellation the waiter got this watch's, for its deadline? Then it is
        taken back (as ``asyncio.timeout`` does; a cancellation from elsewhere stays one)."""
        task = self.task
        return self.fired and task is not None and task.uncancel() == 0

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        task = self.task
        if task is None:
            return
        if loop.time() >= self.deadline:
            self.fired = True
            task.cancel()
        else:
            self.timer = loop.call_at(self.deadline, self._check, loop)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def pack(*args: str | bytes | int | float) -> bytes:
    """A command in the Redis protocol, packed in one call (no ``bool``: it is refused)."""
    return bytes(hiredis.pack_command(args))  # type: ignore[arg-type,unused-ignore]


class Link:
    """One connection of ``redis``'s pool, held for one caller that sends one command at a
    time; None from :meth:`of` where the client has no single pool (a cluster)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: AbstractConnection | None = None
        self._direct = False
        self._watch = Watch()

    @classmethod
    def of(cls, redis: Redis) -> Link | None:
        pool = _pool(redis)
        return None if pool is None else cls(pool)

    async def call(self, command: bytes, before: bytes | None = None) -> Any:
        """Send one packed command and return its reply; after a lost link, once more on a
        new connection (as the client's own retry does: the caller's commands are safe to
        re-send). ``before``: a command sent ahead of it in the same write (a blocking pop, so
        that the command runs the moment the pop returns), its reply dropped.

        :raises redis.exceptions.ResponseError: an error reply (the link stays).
        :raises redis.exceptions.ConnectionError: or TimeoutError: the link was lost twice.
        """
        again = True
        while True:
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = await self._pool.get_connection()  # type: ignore[no-untyped-call,unused-ignore]
                    self._direct = direct(conn)
                if not self._direct:
                    return await _through(conn, command, before)
                c: Any = conn  # its stream and hiredis reader (see direct)
                timeout = c.socket_timeout
                watch = self._watch
                if timeout is not None:
                    watch.begin(timeout)
                try:
                    if _write(c, command, before):
                        await c._writer.drain()
                    first = None if before is None else await _read(c)
                    return _check(first, await _read(c))
                except asyncio.CancelledError:
                    if timeout is not None and watch.expired():
                        raise rex.TimeoutError(f"Timeout reading from {c._host_error()}") from None
                    raise
                finally:
                    watch.task = None
            except rex.ResponseError:
                raise
            except (rex.ConnectionError, rex.TimeoutError, OSError):
                with anyio.CancelScope(shield=True):
                    await self.drop()
                if not again:
                    raise
                again = False  # once more, on a new connection
            except BaseException:
                with anyio.CancelScope(shield=True):  # closed even when the call was cancelled
                    await self.drop()
                raise

    async def drop(self) -> None:
        """Give the connection back, closed (the next call takes another)."""
        self._watch.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def aclose(self) -> None:
        """Give the connection back to the pool, open, for others to use."""
        self._watch.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


class Links:
    """Held connections for calls that may overlap (a producer's submits): an idle link is
    reused, else a new one takes a connection from the pool; at most ``keep`` stay held."""

    def __init__(self, pool: ConnectionPool, keep: int = 4) -> None:
        self._pool = pool
        self._keep = keep
        self._idle: list[Link] = []

    @classmethod
    def of(cls, redis: Redis, keep: int = 4) -> Links | None:
        pool = _pool(redis)
        return None if pool is None else cls(pool, keep)

    def take(self) -> Link:
        """A link of one's own for one call; hand it back with :meth:`give`."""
        return self._idle.pop() if self._idle else Link(self._pool)

    def give(self, link: Link) -> bool:
        """Take ``link`` back for the next caller; False if enough are held already: the caller
        then closes it (:meth:`Link.aclose`)."""
        if len(self._idle) < self._keep:
            self._idle.append(link)
            return True
        return False
