"""``aioqueue-web``: parse flags and environment, refuse unsafe binds, serve with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .._imports import import_queue
from .context import DEFAULT_DISPATCH_TASK, Settings

__all__ = ("main", "parser")

PROG = "aioqueue-web"
_TRUE = ("1", "true", "yes", "on")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, no usage block: ``aioqueue-web: <what is wrong>``; exit code 2."""
        self.exit(2, f"{self.prog}: {message}\n")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _flag(name: str) -> bool:
    return (os.environ.get(name) or "").strip().lower() in _TRUE


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port number from 0 to 65535 (--port or AIOQUEUE_WEB_PORT), got {text!r}"
        )
    return int(text)


def parser() -> argparse.ArgumentParser:
    """Every flag; each has an environment variable, and a flag beats its variable."""
    p = _Parser(prog=PROG, description="HTTP API and dashboard for aioqueue queues.")
    queues = [q for q in (_env("AIOQUEUE_WEB_QUEUES") or "").split(",") if q]
    p.add_argument("--queue", action="append", dest="queues", metavar="NAME",
                   help="a queue to serve, repeatable ($AIOQUEUE_WEB_QUEUES, comma-separated; "
                        "default: every registered queue)")  # fmt: skip
    p.set_defaults(queues=None, default_queues=queues)
    p.add_argument("--tasks", metavar="MODULE:ATTR", default=_env("AIOQUEUE_WEB_TASKS"),
                   help="a Queue whose registered tasks submits are checked against "
                        "($AIOQUEUE_WEB_TASKS; default: any task name is accepted)")  # fmt: skip
    p.add_argument(
        "--redis-url",
        default=_env("AIOQUEUE_REDIS_URL"),
        help="Redis to use ($AIOQUEUE_REDIS_URL, else redis://localhost:6379/0)",
    )
    p.add_argument(
        "--host",
        default=_env("AIOQUEUE_WEB_HOST", "127.0.0.1"),
        help="address to listen on ($AIOQUEUE_WEB_HOST, default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=_env("AIOQUEUE_WEB_PORT", "8700"),
        help="port to listen on ($AIOQUEUE_WEB_PORT, default 8700)",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        default=_flag("AIOQUEUE_WEB_READ_ONLY"),
        help="refuse every write with 403 ($AIOQUEUE_WEB_READ_ONLY=1)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=_flag("AIOQUEUE_WEB_INSECURE"),
        help="allow a non-loopback host without $AIOQUEUE_WEB_TOKEN",
    )
    p.add_argument(
        "--dispatch-task",
        metavar="NAME",
        default=_env("AIOQUEUE_WEB_DISPATCH_TASK", DEFAULT_DISPATCH_TASK),
        help=f"task POST /dispatch submits (default {DEFAULT_DISPATCH_TASK})",
    )
    p.add_argument(
        "--log-level",
        default=_env("AIOQUEUE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    return p


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from(a: argparse.Namespace) -> Settings:
    """The server's settings from parsed flags; ``$AIOQUEUE_WEB_TOKEN`` gives the token.

    :raises ValueError: for a non-loopback host without a token (and without ``--insecure``),
        or a ``--tasks`` that doesn't import.
    """
    token = os.environ.get("AIOQUEUE_WEB_TOKEN") or None
    if not _loopback(a.host) and token is None and not a.insecure:
        raise ValueError(
            f"refusing to listen on {a.host} without a token: set AIOQUEUE_WEB_TOKEN "
            f"(or pass --insecure to serve anyone who can reach it)"
        )
    tasks = None
    if a.tasks:
        tasks = dict(import_queue(a.tasks).tasks)
    return Settings(
        redis_url=a.redis_url,
        queues=tuple(a.queues or a.default_queues),
        tasks=tasks,
        token=token,
        read_only=a.read_only,
        dispatch_task=a.dispatch_task,
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Serve until interrupted; exit 2 on bad usage, 1 when the server can't start."""
    a = parser().parse_args(argv)
    try:
        settings = settings_from(a)
        import uvicorn

        from .app import create_app
    except (ValueError, ImportError) as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        sys.exit(2 if isinstance(exc, ValueError) else 1)
    logging.basicConfig(level=a.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    auth = "token required" if settings.token else "no token"
    mode = ", read-only" if settings.read_only else ""
    sys.stderr.write(f"{PROG}: serving http://{a.host}:{a.port}/ ({auth}{mode})\n")
    uvicorn.run(create_app(settings), host=a.host, port=a.port, log_level=a.log_level,
                server_header=False)  # fmt: skip
    sys.exit(0)
