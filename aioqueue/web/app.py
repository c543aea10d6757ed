"""The Starlette app: routes, the token and read-only guards, the body cap, errors as JSON."""

from __future__ import annotations

from . import _deps  # noqa: F401 - first: says "install aioqueue[web]" when it is missing

# isort: split
import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._redis import call_redis
from ..admin.session import CommandError
from ..errors import (
    AioqueueError,
    ArgumentError,
    InvalidOptions,
    PayloadTooLarge,
    RedisUnavailable,
    SerializationError,
    UnknownTask,
)
from . import api, dead
from .context import Context, HttpError, Settings
from .openapi import document

__all__ = ("create_app",)

log = logging.getLogger(__name__)

# the dashboard's files and the health probes: no token needed (they show nothing of the queues)
_OPEN_PREFIXES = ("/static/", "/health/")
_READS = ("GET", "HEAD", "OPTIONS")
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Guard:
    """ASGI middleware: the bearer token, read-only mode, and the request body cap."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s, path = self.settings, scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if s.token is not None and path != "/" and not path.startswith(_OPEN_PREFIXES):
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.encode(), s.token.encode()
            ):
                refusal = _error(
                    401, "missing or wrong token: send 'Authorization: Bearer <token>'"
                )
                refusal.headers["WWW-Authenticate"] = "Bearer"
        if refusal is None and s.read_only and scope["method"] not in _READS:
            refusal = _error(403, "this server is read-only: writes are refused")
        length = headers.get("content-length", "")
        if refusal is None and length.isdigit() and int(length) > s.max_body:
            refusal = _error(413, f"request body of {int(length):,} bytes is over the limit "
                                  f"of {s.max_body:,} bytes")  # fmt: skip
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, self._capped(receive), send)

    def _capped(self, receive: Receive) -> Receive:
        """``receive`` that stops a body (sent without a length) once it passes the cap."""
        seen = 0
        cap = self.settings.max_body

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:
                raise HttpError(413, f"request body is over the limit of {cap:,} bytes")
            return message

        return capped


async def _on_error(request: Request, exc: Exception) -> Response:
    """Every refusal as ``{"error": message}`` with its status."""
    if isinstance(exc, HTTPException):  # no such route, method not allowed
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
    if isinstance(exc, HttpError):
        return _error(exc.status, str(exc))
    if isinstance(exc, PayloadTooLarge):
        return _error(413, str(exc))
    if isinstance(exc, ArgumentError | SerializationError | InvalidOptions | UnknownTask):
        return _error(400, str(exc))
    if isinstance(exc, CommandError):
        return _error(404, str(exc))
    if isinstance(exc, RedisUnavailable):
        return _error(503, str(exc))
    log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return _error(500, f"{type(exc).__name__}: {exc}")


def _static(name: str, media_type: str) -> Response:
    body = files(__package__).joinpath("static", name).read_bytes()
    return Response(body, media_type=media_type, headers=_HEADERS)


async def _index(request: Request) -> Response:
    return _static("index.html", "text/html; charset=utf-8")


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC:
        return _error(404, f"no such file: {name}")
    return _static(name, _STATIC[name])


async def _live(request: Request) -> Response:
    """``GET /health/live``: the server answers (for a liveness probe)."""
    return JSONResponse({"live": True})


async def _ready(request: Request) -> Response:
    """``GET /health/ready``: Redis answers a PING within 2 s; else 503 with the cause."""
    ctx: Context = request.app.state.ctx
    try:
        async with asyncio.timeout(2.0):
            await call_redis(ctx.session.redis.ping(), ctx.session.url)
    except (AioqueueError, TimeoutError) as exc:
        return _error(503, f"not ready: {exc or 'no answer from Redis in 2 s'}")
    return JSONResponse({"ready": True})


async def _openapi(request: Request) -> Response:
    return Response(json.dumps(document()), media_type="application/json")


def create_app(settings: Settings | None = None) -> Starlette:
    """The web app: the JSON API, ``/openapi.json`` and the dashboard at ``/``."""
    settings = settings or Settings()
    ctx = Context(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await ctx.aclose()

    qp = "/api/queues/{queue}"
    routes = [
        Route("/", _index),
        Route("/static/{name}", _asset),
        Route("/openapi.json", _openapi),
        Route("/health/live", _live),
        Route("/health/ready", _ready),
        Route("/api/queues", api.queues),
        Route(qp, api.queue),
        Route(qp + "/jobs", api.submit, methods=["POST"]),
        Route(qp + "/dead", dead.dead_letters),
        Route(qp + "/dead/retry", dead.retry, methods=["POST"]),
        Route(qp + "/dead/purge", dead.purge, methods=["POST"]),
        Route(qp + "/pause", api.pause, methods=["POST"]),
        Route(qp + "/resume", api.resume, methods=["POST"]),
        Route("/api/jobs/{id}", api.job),
        Route("/api/jobs/{id}", api.cancel, methods=["DELETE"]),
        Route("/dispatch", api.dispatch, methods=["POST"]),
    ]
    handlers = {AioqueueError: _on_error, HTTPException: _on_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.ctx = ctx
    app.add_middleware(_Guard, settings=settings)
    return app
