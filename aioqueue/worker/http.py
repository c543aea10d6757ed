"""A small HTTP server on the worker's loop: ``/metrics``, ``/health/live``, ``/health/ready``.

One request per connection (``Connection: close``), GET or HEAD, a bounded head read within
:data:`READ_TIMEOUT`; no web framework. A handler never raises into the worker: a bad request
gets a 4xx, and anything unexpected a 500 and a log line.

- ``/health/live``: 200 while the event loop turns (its tick is at most :data:`LIVE_WINDOW`
  seconds old), else 503. A loop blocked outright does not answer at all: a probe's timeout
  says so.
- ``/health/ready``: 200 when Redis answered the last heartbeat (within a lease), live children
  take jobs, and the worker is not stopping; else 503 and a JSON body naming the failed checks.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .metrics import Metrics

if TYPE_CHECKING:
    from .supervisor import Worker

__all__ = ("StatusServer", "ready_checks")

log = logging.getLogger("aioqueue.worker")

MAX_HEAD = 8192  # bytes of request line and headers read at most
READ_TIMEOUT = 5.0  # seconds a client has to send its request
TICK = 0.5  # seconds between the loop's ticks
LIVE_WINDOW = 5.0  # the loop is live while its last tick is at most this old
JSON = "application/json"
_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


class _BadRequest(Exception):
    pass


def ready_checks(w: Worker) -> dict[str, str | None]:
    """Per readiness check, None when it passes, else what is wrong."""
    redis: str | None = None
    if w.beat_error is not None:
        redis = f"the last heartbeat failed: {w.beat_error}"
    elif w.beat_at is None:
        redis = "no heartbeat has been answered yet"
    elif time.monotonic() - w.beat_at > w.settings.lease:
        redis = f"no heartbeat answered for {time.monotonic() - w.beat_at:.1f}s"
    pool = w.pool
    children: str | None = None
    if pool is None or pool.capacity == 0:
        why = pool.broken if pool is not None and pool.broken else "starting or being replaced"
        children = f"no live child process ({why})"
    stopping = "the worker is stopping" if w.stopping.is_set() else None
    return {"redis": redis, "children": children, "stopping": stopping}


class StatusServer:
    """Serves one worker's metrics and health on ``listener`` until cancelled."""

    def __init__(self, worker: Worker, metrics: Metrics, listener: anyio.abc.Listener[Any]):
        self.w = worker
        self.metrics = metrics
        self.listener = listener
        self.tick = time.monotonic()

    async def serve(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._ticks)
            while True:
                try:
                    await self.listener.serve(self._handle, tg)
                except OSError as exc:  # accept() failed (out of file descriptors, say)
                    log.warning("metrics server: %s; accepting again in 1s", exc)
                    await anyio.sleep(1.0)

    async def _ticks(self) -> None:
        while True:
            self.tick = time.monotonic()
            await anyio.sleep(TICK)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(READ_TIMEOUT):
                    method, path, headers = await _read_request(stream)
                status, content_type, body = await self._route(method, path, headers)
            except (_BadRequest, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
                status, content_type, body = 400, JSON, b'{"error": "bad request"}\n'
                method = "GET"
            except Exception:
                log.exception("metrics server: the request failed")
                status, content_type, body = 500, JSON, b'{"error": "internal error"}\n'
                method = "GET"
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            try:
                await stream.send(head if method == "HEAD" else head + body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the client went away

    async def _route(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        if path not in ("/metrics", "/health/live", "/health/ready"):
            return 404, JSON, b'{"error": "not found"}\n'
        if method not in ("GET", "HEAD"):
            return 405, JSON, b'{"error": "method not allowed"}\n'
        if path == "/metrics":
            body, content_type = await self.metrics.render(headers.get("accept", ""))
            return 200, content_type, body
        if path == "/health/live":
            age = time.monotonic() - self.tick
            live = age <= LIVE_WINDOW
            return 200 if live else 503, JSON, _json({"live": live, "tick_age_s": round(age, 3)})
        checks = ready_checks(self.w)
        failed = {name: why for name, why in checks.items() if why is not None}
        body = _json({"ready": not failed, "failed": failed})
        return 503 if failed else 200, JSON, body


def _json(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


async def _read_request(stream: anyio.abc.ByteStream) -> tuple[str, str, dict[str, str]]:
    """The method, the path (without its query) and the headers (names in lower case)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise _BadRequest
        data += await stream.receive(4096)
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], headers
