"""A TCP fault-injection proxy that sits between Redis clients and a Redis server.

:class:`FaultProxy` listens on ``127.0.0.1`` (an ephemeral port) and, for every accepted client,
opens one connection to the upstream server and forwards bytes both ways. Faults can be switched
on and off at run time:

``latency``
    Each forwarded chunk is held for ``ms`` (plus a uniform ``±jitter_ms``) before it is written.
    The delay is a propagation delay, not a serialisation delay: back-to-back chunks do not add up,
    and the order of chunks within one direction is always kept.
``bandwidth``
    A token bucket per direction, shared by all connections (it models one link).
``blackhole``
    Nothing is forwarded in either direction and nothing is closed: to both peers the other side
    looks half-open. Connections accepted while the blackhole is on never reach the server. Bytes
    that arrive during a blackhole are discarded, so a connection that lost bytes (or that was
    accepted during the blackhole) is *dark*: its byte stream has a gap, and it stays dark after
    :meth:`FaultProxy.heal` (forwarding more bytes would desynchronise the RESP stream). Close and
    reset events are not passed across a dark connection either. When the network is healed, dark
    connections that never reached the server, or one of whose peers has gone away, are closed
    (the late FIN finally "arrives"); the others stay open and dark.
    Connections that lost nothing during the blackhole resume normally after ``heal``.
``reset_all``
    Every current connection is aborted with an RST on both sides.
``drop_reply``
    In the server-to-client direction, with probability ``p`` a reply is not forwarded; the
    connection is reset instead (both sides), so the server applied the command but the client never
    learns its outcome. With ``match``, only replies to matching requests are candidates.
``slice``
    Chunks are written in pieces of at most ``n`` bytes, one ``send`` each (optionally with a pause
    between pieces), to exercise the reassembly in parsers.
``refuse`` / ``accept``
    Close the listening socket so that new connects are refused; reopen it on the same port.
    Existing connections are unaffected.

:meth:`FaultProxy.heal` clears every forwarding fault (latency, bandwidth, blackhole, drop_reply,
slice). It does not reopen a refused listener: the listener is a separate switch, turned back on
with :meth:`FaultProxy.accept`.

How replies are matched to requests: the client-to-server stream is peeked at with a small
incremental RESP parser that records the head of each request (its command name, upper-cased, and
for ``EVAL``/``EVALSHA`` and their ``_RO`` variants also the second bulk string: the script or its
sha). ``match`` equals a command name (case-insensitively; note that redis-py's ``incr()`` sends
``INCRBY``) or is a prefix of that second bulk string; a tuple of such patterns matches a request
that any of them matches (:data:`SCRIPTS` matches every script call). Every server-to-client
chunk is attributed to the requests forwarded since the previous server-to-client chunk was read.
For one request at a time this is exact; for pipelined traffic it is approximate: a chunk holding
several replies is attributed to all the requests sent before it (it is a candidate if any of
them matches), and the later chunks of a reply that spans several chunks are attributed to no
request (so they are candidates only when ``match`` is ``None``).

Counters: ``resets`` counts connections the proxy aborted with an RST of its own accord
(``reset_all`` and ``drop_reply``; resets passed through from a peer are not counted),
``dropped_replies`` the replies withheld by ``drop_reply``, ``bytes_c2s``/``bytes_s2c`` the bytes
actually forwarded, ``connections`` the client connections accepted in total and ``active`` those
open now.

Randomness (jitter and drop decisions) comes from one ``random.Random(seed)`` per proxy.

:class:`FaultProxy` lives in the event loop that starts it: its fault methods must be called from
that loop's thread. :class:`ThreadedFaultProxy` runs a :class:`FaultProxy` in a background thread
with its own event loop; its methods can be called from any thread and return once the change is
in effect, which suits synchronous tests and tests whose clients are other processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Concatenate, Final, Generic, Literal, ParamSpec, TypeVar, overload

__all__ = ("SCRIPTS", "Direction", "FaultProxy", "ThreadedFaultProxy", "Match", "peek_commands")

Direction = Literal["both", "c2s", "s2c"]

#: What ``drop_reply`` matches: one pattern, or any of several.
Match = bytes | str | tuple[bytes | str, ...]

#: Every script call: ``drop_reply(p, match=SCRIPTS)`` hits whatever script a client runs.
SCRIPTS: Final = ("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO")

_T = TypeVar("_T")
_P = ParamSpec("_P")

_CHUNK: Final = 65536
_MAX_LINE: Final = 65536
_MAX_CAPTURE: Final = 4096
_SCRIPT_COMMANDS: Final = frozenset({b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO"})
_LINGER_RST: Final = struct.pack("ii", 1, 0)
_STOP_GRACE: Final = 5.0

_C2S: Final = 0
_S2C: Final = 1


class _RequestPeek:
    """Incremental RESP request parser that yields only the head of each request."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._args_left = 0
        self._bulk_left = 0
        self._capturing = False
        self._capture = bytearray()
        self._args: list[bytes] = []

    def _reset(self) -> None:
        self._buf.clear()
        self._args_left = 0
        self._bulk_left = 0
        self._capturing = False
        self._capture.clear()
        self._args = []

    def _finish_arg(self, heads: list[tuple[bytes, ...]]) -> None:
        self._args.append(bytes(self._capture) if self._capturing else b"")
        self._capture.clear()
        self._args_left -= 1
        if self._args_left == 0:
            heads.append(_head(self._args))
            self._args = []

    def feed(self, data: bytes) -> list[tuple[bytes, ...]]:
        """Consume ``data``; return the heads of the requests that started in it or before."""
        heads: list[tuple[bytes, ...]] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._bulk_left > 0:
                take = min(self._bulk_left, len(view) - pos)
                if self._capturing:
                    self._capture += view[pos : pos + take]
                self._bulk_left -= take
                pos += take
                if self._bulk_left == 0:
                    if self._capturing:
                        del self._capture[-2:]
                    self._finish_arg(heads)
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._buf += view[pos:]
                if len(self._buf) > _MAX_LINE:
                    self._reset()
                break
            self._buf += view[pos : end + 1]
            pos = end + 1
            line = bytes(self._buf).rstrip(b"\r\n")
            self._buf.clear()
            try:
                self._line(line, heads)
            except ValueError:
                self._reset()
        return heads

    def _line(self, line: bytes, heads: list[tuple[bytes, ...]]) -> None:
        if self._args_left > 0:
            if not line.startswith(b"$"):
                raise ValueError("expected a bulk string")
            size = int(line[1:])
            if size < 0:
                self._finish_arg(heads)
                return
            self._bulk_left = size + 2
            self._capturing = len(self._args) < 2 and size <= _MAX_CAPTURE
            return
        if line.startswith(b"*"):
            count = int(line[1:])
            if count > 0:
                self._args_left = count
                self._args = []
            return
        parts = line.split()
        if parts:
            heads.append(_head(parts))


def _head(args: list[bytes]) -> tuple[bytes, ...]:
    name = args[0].upper() if args else b""
    if name in _SCRIPT_COMMANDS and len(args) > 1:
        return (name, args[1])
    return (name,)


def peek_commands(data: bytes) -> list[tuple[bytes, ...]]:
    """Return the request heads in one complete buffer of RESP requests (see the module notes)."""
    return _RequestPeek().feed(data)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _patterns(match: Match) -> tuple[bytes, ...]:
    items = match if isinstance(match, tuple) else (match,)
    return tuple(_as_bytes(m).upper() for m in items)


def _matches(heads: tuple[tuple[bytes, ...], ...], match: tuple[bytes, ...]) -> bool:
    for head in heads:
        for wanted in match:
            if head[0] == wanted:
                return True
            if len(head) > 1 and head[1].upper().startswith(wanted):
                return True
    return False


class _TokenBucket:
    """A token bucket: ``reserve`` takes tokens (possibly into debt) and says how long to wait."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def reserve(self, amount: int, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(eq=False)
class _Chunk:
    due: float
    data: bytes
    heads: tuple[tuple[bytes, ...], ...]


class _End:
    """Marker put on a pump queue when its source ended (``reset`` says how)."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset


@dataclass(eq=False)
class _Conn:
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader | None = None
    upstream_writer: asyncio.StreamWriter | None = None
    dark: bool = False
    ended: int = 0
    closed: bool = False
    peek: _RequestPeek = field(default_factory=_RequestPeek)
    pending: list[tuple[bytes, ...]] = field(default_factory=list)
    last_due: list[float] = field(default_factory=lambda: [0.0, 0.0])
    queues: tuple[asyncio.Queue[_Chunk | _End], asyncio.Queue[_Chunk | _End]] = field(
        default_factory=lambda: (asyncio.Queue(), asyncio.Queue())
    )
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writers(self) -> list[asyncio.StreamWriter]:
        if self.upstream_writer is None:
            return [self.client_writer]
        return [self.client_writer, self.upstream_writer]


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class FaultProxy:
    """An asyncio TCP proxy in front of one upstream server, with switchable faults."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = 0
        self.rng = random.Random(seed)
        self.resets = 0
        self.dropped_replies = 0
        self.bytes_c2s = 0
        self.bytes_s2c = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._old_servers: list[asyncio.Server] = []
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._started = False
        self._latency = [0.0, 0.0]
        self._jitter = [0.0, 0.0]
        self._buckets: list[_TokenBucket | None] = [None, None]
        self._blackholed = False
        self._drop_p = 0.0
        self._drop_match: tuple[bytes, ...] | None = None
        self._slice: int | None = None
        self._slice_gap = 0.0

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the proxy's listener."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def active(self) -> int:
        """The number of client connections currently open through the proxy."""
        return len(self._conns)

    @property
    def listening(self) -> bool:
        """True while the listener accepts new connections."""
        return self._server is not None

    @property
    def blackholed(self) -> bool:
        """True while the blackhole fault is on."""
        return self._blackholed

    async def start(self) -> None:
        """Open the listener (port 0 picks a free port, kept for the proxy's lifetime)."""
        if self._started:
            return
        self._started = True
        await self.accept()

    async def stop(self) -> None:
        """Close the listener and every connection, and wait for the connection tasks to end."""
        self._started = False
        self.refuse()
        for conn in list(self._conns):
            self._close(conn, rst=False)
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=_STOP_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        servers, self._old_servers = self._old_servers, []
        for server in servers:
            await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # faults

    def latency(self, ms: float, jitter_ms: float = 0.0, direction: Direction = "both") -> None:
        """Delay every forwarded chunk by ``ms`` ± uniform ``jitter_ms`` (0 turns it off)."""
        if ms < 0 or jitter_ms < 0:
            raise ValueError("latency and jitter must be >= 0")
        for index in _directions(direction):
            self._latency[index] = ms / 1000.0
            self._jitter[index] = jitter_ms / 1000.0

    def bandwidth(self, bytes_per_s: float | None, burst: int | None = None) -> None:
        """Limit each direction to ``bytes_per_s`` with a token bucket (``None`` turns it off)."""
        if bytes_per_s is None:
            self._buckets = [None, None]
            return
        if bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be > 0")
        size = float(burst) if burst is not None else max(1.0, bytes_per_s / 20.0)
        now = time.monotonic()
        self._buckets = [_TokenBucket(bytes_per_s, size, now) for _ in range(2)]

    def blackhole(self) -> None:
        """Stop forwarding in both directions while keeping every socket open."""
        self._blackholed = True

    def reset_all(self) -> int:
        """Abort every current connection with an RST on both sides; return how many."""
        conns = list(self._conns)
        for conn in conns:
            self._close(conn, rst=True)
        self.resets += len(conns)
        return len(conns)

    def drop_reply(self, p: float, match: Match | None = None) -> None:
        """Reset the connection instead of forwarding a (matching) reply, with probability ``p``."""
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be within [0, 1]")
        self._drop_p = p
        self._drop_match = None if match is None else _patterns(match)

    def slice(self, n: int | None, gap_ms: float = 0.0) -> None:
        """Forward in pieces of at most ``n`` bytes, pausing ``gap_ms`` between them."""
        if n is not None and n < 1:
            raise ValueError("n must be >= 1")
        self._slice = n
        self._slice_gap = gap_ms / 1000.0

    def refuse(self) -> None:
        """Close the listener so that new connects are refused; open connections stay."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self._old_servers.append(server)

    async def accept(self) -> None:
        """Open (or reopen) the listener, on the same port once one was chosen."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def heal(self) -> None:
        """Clear every forwarding fault; a refused listener stays closed until :meth:`accept`."""
        self._latency = [0.0, 0.0]
        self._jitter = [0.0, 0.0]
        self._buckets = [None, None]
        self._blackholed = False
        self._drop_p = 0.0
        self._drop_match = None
        self._slice = None
        self._slice_gap = 0.0
        for conn in list(self._conns):
            if conn.dark and (conn.ended or conn.upstream_writer is None):
                self._close(conn, rst=False)

    # connection handling

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self.connections += 1
        self._conns.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if self._blackholed:
                conn.dark = True
                conn.tasks.append(asyncio.create_task(self._read(conn, _C2S)))
            else:
                try:
                    up_reader, up_writer = await asyncio.open_connection(
                        self.upstream_host, self.upstream_port
                    )
                except OSError:
                    self._close(conn, rst=True)
                    return
                conn.upstream_reader, conn.upstream_writer = up_reader, up_writer
                if conn.closed:
                    _abort_with_rst(up_writer)
                    return
                for direction in (_C2S, _S2C):
                    conn.tasks.append(asyncio.create_task(self._read(conn, direction)))
                    conn.tasks.append(asyncio.create_task(self._send(conn, direction)))
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            for child in conn.tasks:
                child.cancel()
            if conn.tasks:
                await asyncio.gather(*conn.tasks, return_exceptions=True)
            self._close(conn, rst=False)
            for writer in conn.writers():
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)

    def _close(self, conn: _Conn, *, rst: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for writer in conn.writers():
            if rst:
                _abort_with_rst(writer)
            else:
                writer.close()
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()

    def _source(self, conn: _Conn, direction: int) -> asyncio.StreamReader:
        if direction == _C2S:
            return conn.client_reader
        assert conn.upstream_reader is not None
        return conn.upstream_reader

    def _target(self, conn: _Conn, direction: int) -> asyncio.StreamWriter:
        if direction == _S2C:
            return conn.client_writer
        assert conn.upstream_writer is not None
        return conn.upstream_writer

    def _go_dark_end(self, conn: _Conn) -> None:
        conn.dark = True
        conn.ended += 1
        if conn.upstream_writer is None or conn.ended >= 2 or not self._blackholed:
            self._close(conn, rst=False)

    async def _read(self, conn: _Conn, direction: int) -> None:
        source = self._source(conn, direction)
        queue = conn.queues[direction]
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await source.read(_CHUNK)
            except OSError:
                if conn.dark or self._blackholed:
                    self._go_dark_end(conn)
                else:
                    queue.put_nowait(_End(reset=True))
                return
            if not data:
                if conn.dark or self._blackholed:
                    self._go_dark_end(conn)
                else:
                    queue.put_nowait(_End(reset=False))
                return
            if conn.dark or self._blackholed:
                conn.dark = True
                continue
            heads: tuple[tuple[bytes, ...], ...] = ()
            if direction == _S2C:
                heads = tuple(conn.pending)
                conn.pending.clear()
            due = loop.time() + self._delay(direction)
            due = max(due, conn.last_due[direction])
            conn.last_due[direction] = due
            queue.put_nowait(_Chunk(due, data, heads))

    def _delay(self, direction: int) -> float:
        base = self._latency[direction]
        jitter = self._jitter[direction]
        if jitter:
            base += self.rng.uniform(-jitter, jitter)
        return max(0.0, base)

    def _should_drop(self, heads: tuple[tuple[bytes, ...], ...]) -> bool:
        if self._drop_p <= 0.0:
            return False
        if self._drop_match is not None and not _matches(heads, self._drop_match):
            return False
        return self.rng.random() < self._drop_p

    async def _send(self, conn: _Conn, direction: int) -> None:
        queue = conn.queues[direction]
        target = self._target(conn, direction)
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if conn.dark:
                        self._go_dark_end(conn)
                    else:
                        if not item.reset:
                            with contextlib.suppress(OSError):
                                await target.drain()
                        self._close(conn, rst=item.reset)
                    return
                wait = item.due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if conn.dark or self._blackholed:
                    conn.dark = True
                    continue
                if direction == _S2C and self._should_drop(item.heads):
                    self.dropped_replies += 1
                    self.resets += 1
                    self._close(conn, rst=True)
                    return
                if direction == _C2S:
                    conn.pending.extend(conn.peek.feed(item.data))
                await self._forward(conn, direction, target, item.data)
        except OSError:
            self._close(conn, rst=True)

    async def _forward(
        self, conn: _Conn, direction: int, target: asyncio.StreamWriter, data: bytes
    ) -> None:
        size = self._slice or len(data)
        for start in range(0, len(data), size):
            if conn.dark or self._blackholed:
                conn.dark = True
                return
            piece = data[start : start + size]
            bucket = self._buckets[direction]
            if bucket is not None:
                wait = bucket.reserve(len(piece), time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
            target.write(piece)
            await target.drain()
            if direction == _C2S:
                self.bytes_c2s += len(piece)
            else:
                self.bytes_s2c += len(piece)
            if self._slice is not None and start + size < len(data):
                await asyncio.sleep(self._slice_gap)


def _directions(direction: Direction) -> tuple[int, ...]:
    if direction == "both":
        return (_C2S, _S2C)
    if direction == "c2s":
        return (_C2S,)
    if direction == "s2c":
        return (_S2C,)
    raise ValueError(f"direction must be 'both', 'c2s' or 's2c', not {direction!r}")


class _Mirror(Generic[_T]):
    """A read-only attribute of a :class:`ThreadedFaultProxy`: the same attribute of the
    :class:`FaultProxy` it runs (a plain read; the value may be one loop step old)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> _Mirror[_T]: ...

    @overload
    def __get__(self, obj: ThreadedFaultProxy, owner: type[Any] | None = None) -> _T: ...

    def __get__(
        self, obj: ThreadedFaultProxy | None, owner: type[Any] | None = None
    ) -> _T | _Mirror[_T]:
        if obj is None:
            return self
        value: _T = getattr(obj.proxy, self.name)
        return value


def _on_loop(
    method: Callable[Concatenate[FaultProxy, _P], _T],
) -> Callable[Concatenate[ThreadedFaultProxy, _P], _T]:
    """``method`` of :class:`FaultProxy` as a method of :class:`ThreadedFaultProxy`: called in
    the proxy's loop thread, returning once it has run there (same signature and docstring)."""

    def call(self: ThreadedFaultProxy, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async def invoke() -> _T:
            return method(self.proxy, *args, **kwargs)

        return self._run(invoke())

    functools.update_wrapper(call, method)
    return call


class ThreadedFaultProxy:
    """A :class:`FaultProxy` running in a background thread; every method is thread-safe."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
    ) -> None:
        self.proxy = FaultProxy(upstream_host, upstream_port, seed=seed, host=host)
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    port = _Mirror[int]("The listener's port (0 before :meth:`start`).")
    url = _Mirror[str]("The ``redis://`` URL of the proxy's listener.")
    resets = _Mirror[int]("Connections aborted by ``reset_all`` or ``drop_reply``.")
    dropped_replies = _Mirror[int]("Replies withheld by ``drop_reply``.")
    bytes_c2s = _Mirror[int]("Bytes forwarded from clients to the server.")
    bytes_s2c = _Mirror[int]("Bytes forwarded from the server to clients.")
    connections = _Mirror[int]("Client connections accepted in total.")
    active = _Mirror[int]("Client connections open right now.")
    listening = _Mirror[bool]("True while the listener accepts new connections.")

    latency = _on_loop(FaultProxy.latency)
    bandwidth = _on_loop(FaultProxy.bandwidth)
    blackhole = _on_loop(FaultProxy.blackhole)
    reset_all = _on_loop(FaultProxy.reset_all)
    drop_reply = _on_loop(FaultProxy.drop_reply)
    slice = _on_loop(FaultProxy.slice)
    refuse = _on_loop(FaultProxy.refuse)
    heal = _on_loop(FaultProxy.heal)

    def accept(self) -> None:
        """Open (or reopen) the listener on the same port."""
        self._run(self.proxy.accept())

    def start(self) -> None:
        """Start the loop thread and the listener; return once it accepts connections."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=f"fault-proxy-{id(self):x}", daemon=True)
        thread.start()
        ready.wait(self.timeout)
        self._loop, self._thread = loop, thread
        try:
            self._run(self.proxy.start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the proxy, end the loop thread and close its loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._run(self.proxy.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
            self._loop = self._thread = None
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> ThreadedFaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self.timeout)
