"""``aioqueue-worker MODULE:ATTR``: parse arguments, configure logging and the loop, run.

Logging goes to stderr as text, or as one JSON object per line with ``--log-format json``.

Every flag comes from :data:`aioqueue.worker.settings.OPTIONS` and reads an ``AIOQUEUE_*``
environment variable: a flag on the command line beats the variable, which beats the default.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple, NoReturn

from ._imports import import_queue
from .errors import InvalidOptions
from .urls import check_url
from .worker import Worker, WorkerSettings
from .worker.logs import configure as configure_logging
from .worker.settings import OPTIONS
from .worker.supervisor import WorkerFailed

__all__ = ("Args", "main", "parse_args")

PROG = "aioqueue-worker"


class Args(NamedTuple):
    """What the command line and the environment asked for."""

    spec: str
    settings: WorkerSettings
    redis_url: str | None
    log_level: str


SPEC_ENV = "AIOQUEUE_TASKS"  # MODULE:ATTR when not given on the command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, no usage block: ``aioqueue-worker: <what is wrong>``; exit code 2."""
        self.exit(2, f"{self.prog}: {message}\n")


def _version() -> str:
    try:
        return version("aioqueue")
    except PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
        return "unknown"


def _parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        allow_abbrev=False,  # a prefix that names one flag today may name two tomorrow
        description="Run an aioqueue worker: one supervisor process and a pool of children.",
        epilog="Each flag can be set by the environment variable named in its help; "
        "a flag on the command line wins over the variable.",
    )
    p.add_argument(
        "spec",
        metavar="MODULE:ATTR",
        nargs="?",
        help=f"the Queue to serve, e.g. tasks:queue (env {SPEC_ENV})",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    for s in OPTIONS:
        text = f"{s.description} (default: {s.default}; env {s.env})".replace("%", "%%")
        if s.kind is bool:
            p.add_argument(s.flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            p.add_argument(s.flag, metavar=s.metavar, help=text)
    return p


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Args:
    """Read the command line (``argv``, else ``sys.argv``) and ``AIOQUEUE_*`` variables.

    :raises SystemExit: with code 2, after one line on stderr naming the bad value's source.
    """
    parser = _parser()
    ns = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in OPTIONS:
        given = getattr(ns, s.name)
        source = s.flag
        if given is None:
            given, source = env.get(s.env, "").strip(), s.env
        if isinstance(given, bool):
            values[s.name] = given
        elif given:  # an empty variable counts as unset
            try:
                values[s.name] = s.parse(given)
            except InvalidOptions as exc:
                parser.error(f"{exc} (from {source})")
    redis_url = values.pop("redis_url", None)
    log_level = values.pop("log_level", "info")
    try:
        settings = WorkerSettings(**values)
    except InvalidOptions as exc:
        parser.error(str(exc))
    spec = ns.spec or env.get(SPEC_ENV, "").strip()
    if not spec:
        parser.error(f"name the Queue to serve: MODULE:ATTR, or {SPEC_ENV}")
    return Args(spec, settings, redis_url, log_level)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``aioqueue-worker``."""
    args = parse_args(argv)
    configure_logging(args.log_level, args.settings.log_format)
    try:
        queue = import_queue(args.spec)
        if args.redis_url:
            queue.redis_url = check_url(args.redis_url)
        worker = Worker(queue, args.spec, args.settings)
    except (ValueError, ImportError, AttributeError) as exc:
        sys.exit(f"{PROG}: {exc}")
    # What is imported now lives as long as the process: out of the collector's way, so that
    # the collections the hot path triggers scan its own young objects, not every module.
    gc.freeze()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional where it doesn't install
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(worker.run())
    except WorkerFailed as exc:  # logged with its details already
        sys.exit(f"{PROG}: {exc}")
