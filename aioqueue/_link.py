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
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import hiredis
from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ("Link", "Links", "pack")


def _pool(redis: Redis) -> ConnectionPool | None:
    """The client's one pool of connections (None for a cluster's client)."""
    pool = getattr(redis, "connection_pool", None)
    return pool if isinstance(pool, ConnectionPool) else None


def pack(*args: str | bytes | int | float) -> bytes:
    """A command in the Redis protocol, packed in one call (no ``bool``: it is refused)."""
    return bytes(hiredis.pack_command(args))  # type: ignore[arg-type,unused-ignore]


class Link:
    """One connection of ``redis``'s pool, held for one caller that sends one command at a
    time; None from :meth:`of` where the client has no single pool (a cluster)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: AbstractConnection | None = None

    @classmethod
    def of(cls, redis: Redis) -> Link | None:
        pool = _pool(redis)
        return None if pool is None else cls(pool)

    async def call(self, command: bytes) -> Any:
        """Send one packed command and return its reply; after a lost link, once more on a
        new connection (as the client's own retry does: the caller's commands are safe to
        re-send).

        :raises redis.exceptions.ResponseError: an error reply (the link stays).
        :raises redis.exceptions.ConnectionError: or TimeoutError: the link was lost twice.
        """
        try:
            return await self._call(command)
        except (rex.ConnectionError, rex.TimeoutError, OSError):
            return await self._call(command)

    async def _call(self, command: bytes) -> Any:
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._pool.get_connection()  # type: ignore[no-untyped-call,unused-ignore]
        try:
            await conn.send_packed_command(command, check_health=False)
            return await conn.read_response()
        except rex.ResponseError:
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):  # closed even when the call was cancelled
                await self.drop()
            raise

    async def drop(self) -> None:
        """Give the connection back, closed (the next call takes another)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def aclose(self) -> None:
        """Give the connection back to the pool, open, for others to use."""
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

    @contextlib.asynccontextmanager
    async def link(self) -> AsyncIterator[Link]:
        """A link of one's own for one call."""
        link = self._idle.pop() if self._idle else Link(self._pool)
        try:
            yield link
        finally:
            if len(self._idle) < self._keep:
                self._idle.append(link)
            else:
                await link.aclose()
