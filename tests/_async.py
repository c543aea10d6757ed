"""Async test helpers: wait on a condition without blocking the event loop; a server that
isn't Redis."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ("eventually", "not_redis")


async def eventually(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    what: str = "",
    *,
    interval: float = 0.01,
) -> object:
    """Check ``predicate`` (a function or a coroutine function) until it gives a true value,
    yielding to the event loop in between; return that value, or fail the test after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def not_redis(reply: bytes = b"HTTP/1.1 400 Bad Request\r\n\r\n") -> AsyncIterator[str]:
    """A TCP server on a loopback port that answers everything with ``reply`` (by default an
    HTTP error, as a web server would); yields its ``redis://`` URL."""
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while await reader.read(4096):
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
