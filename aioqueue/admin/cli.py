"""``aioqueue``: parse the command line, run one command, turn failures into one line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import AioqueueError
from .dlq import Selection, dlq
from .doctor import doctor
from .info import info
from .jobs import cancel, cancel_where, job, parse_json_args, submit
from .pause import pause
from .purge import purge
from .render import Output
from .session import CommandError, Session

__all__ = ("main", "parser")

PROG = "aioqueue"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, no usage block: ``aioqueue: <what is wrong>``; exit code 2."""
        self.exit(2, f"{self.prog}: {message}\n")


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """Every command and its flags; ``--redis-url`` and ``--json`` go after the command."""
    common = _Parser(add_help=False)
    common.add_argument("--redis-url", help="Redis to use (default: $AIOQUEUE_REDIS_URL, "
                        "else redis://localhost:6379/0)")  # fmt: skip
    common.add_argument("--json", action="store_true", help="machine-readable output")
    p = _Parser(prog=PROG, description="Inspect and manage aioqueue queues.", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("info", parents=[common], help="counts, oldest job, counters, workers")
    c.add_argument("queues", nargs="*", metavar="QUEUE", help="default: every registered queue")
    c.add_argument("--watch", nargs="?", const=2.0, type=_seconds, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")  # fmt: skip

    c = sub.add_parser("job", parents=[common], help="one job in full")
    c.add_argument("id", metavar="ID")
    c.add_argument("--queue", help="default: look in every registered queue")

    c = sub.add_parser("dlq", help="dead letters: list, show, retry, purge")
    dsub = c.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for action, text in (("list", "list dead letters"), ("show", "dead letters in full"),
                         ("retry", "move dead letters back to pending"),
                         ("purge", "delete dead letters for good")):  # fmt: skip
        d = dsub.add_parser(action, parents=[common], help=text)
        d.add_argument("--queue", action="append", help="default: every registered queue")
        d.add_argument("--id", nargs="+", dest="ids", metavar="ID")
        d.add_argument("--task", help="dead letters of this task")
        d.add_argument("--error", metavar="TYPE", help="whose final error is of this type")
        d.add_argument("--all", action="store_true", help="every dead letter")
        if action in ("retry", "purge"):
            d.add_argument("--yes", action="store_true", help="don't ask")

    c = sub.add_parser("submit", parents=[common], help="submit a job by task name")
    c.add_argument("queue", metavar="QUEUE")
    c.add_argument("task", metavar="TASK", help="the task's registered name")
    c.add_argument("args", nargs="*", metavar="JSON_ARG", help="positional arguments as JSON")
    c.add_argument("--kwargs", metavar="JSON", help="keyword arguments as a JSON object")
    c.add_argument("--delay", type=float, default=0.0, help="seconds before it may run")
    c.add_argument("--priority", type=int, default=0, help="higher runs first")
    c.add_argument("--key", help="de-duplication key")

    c = sub.add_parser(
        "cancel", parents=[common], help="cancel jobs (running ones: their children are killed)"
    )
    c.add_argument("ids", nargs="*", metavar="ID")
    c.add_argument("--queue", help="default: look in every registered queue")
    c.add_argument("--task", help="instead of ids: every unfinished job of this task (--queue)")
    c.add_argument("--key", help="instead of ids: every unfinished job with this de-dup key")
    c.add_argument("--yes", action="store_true", help="don't ask (with --task or --key)")

    c = sub.add_parser("purge", parents=[common], help="delete every key of a queue")
    c.add_argument("queue", metavar="QUEUE")
    c.add_argument("--yes", action="store_true", help="don't ask")
    c.add_argument("--force", action="store_true", help="even while live workers serve it")

    for verb, text in (("pause", "stop workers from claiming the queues' jobs"),
                       ("resume", "let workers claim the queues' jobs again")):  # fmt: skip
        c = sub.add_parser(verb, parents=[common], help=text)
        c.add_argument("queues", nargs="+", metavar="QUEUE")

    sub.add_parser("worker", help="run a worker (aioqueue worker --help; as aioqueue-worker)")
    sub.add_parser("web", help="the HTTP API and dashboard (aioqueue web --help; the web extra)")
    c = sub.add_parser("doctor", parents=[common], help="check Redis against the guarantees")
    c.add_argument("queue", nargs="?", metavar="QUEUE", help="also check this queue's health")
    return p


async def _run(a: argparse.Namespace, session: Session, out: Output) -> int:
    if a.command == "info":
        return await info(session, out, a.queues, a.watch)
    if a.command == "job":
        return await job(session, out, a.id, a.queue)
    if a.command == "dlq":
        sel = Selection(ids=a.ids, task=a.task, error=a.error, all=a.all)
        return await dlq(session, out, a.action, a.queue, sel, getattr(a, "yes", False))
    if a.command == "submit":
        args, kwargs = parse_json_args(a.args, a.kwargs)
        opts: dict[str, Any] = {"delay": a.delay, "priority": a.priority, "key": a.key}
        return await submit(session, out, a.queue, a.task, args, kwargs, opts)
    if a.command == "cancel":
        if (a.task or a.key) and not a.ids and a.queue:
            return await cancel_where(session, out, a.queue, a.task, a.key, a.yes)
        if not a.ids or a.task or a.key:
            raise CommandError("give job ids, or --queue Q with --task T and/or --key K")
        return await cancel(session, out, a.ids, a.queue)
    if a.command == "purge":
        return await purge(session, out, a.queue, a.yes, a.force)
    if a.command in ("pause", "resume"):
        return await pause(session, out, a.queues, a.command == "pause")
    assert a.command == "doctor"
    return await doctor(session, out, a.queue)


async def _main(a: argparse.Namespace) -> int:
    session = Session(a.redis_url)
    try:
        return await _run(a, session, Output(a.json))
    finally:
        await session.aclose()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run one command; exit 0 on success, 1 on failure (one line on stderr), 2 on bad usage.

    ``aioqueue web ...`` is ``aioqueue-web ...``: the HTTP API and dashboard (the web extra);
    ``aioqueue worker ...`` is ``aioqueue-worker ...``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["web"]:
        from ..web.cli import main as web_main

        web_main(args[1:])
        sys.exit(0)
    if args[:1] == ["worker"]:
        from ..cli import main as worker_main

        worker_main(args[1:])
        sys.exit(0)
    a = parser().parse_args(args)
    try:
        code = asyncio.run(_main(a))
    except KeyboardInterrupt:
        code = 0 if getattr(a, "watch", None) else 130
    except (AioqueueError, ValueError) as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        code = 1
    except BrokenPipeError:
        code = 0
    sys.exit(code)
