"""A worker child's life around its jobs: the queue's start hooks, each job's CPU limit, and
the queue's stop hooks.

:class:`Lifecycle` runs the queue's ``on_child_start`` hooks when it is made, before the child
says it is ready, so that a hook that raises fails the child's start as an import error does
(the traceback, with a note naming the hook, is what the supervisor reports). :meth:`before_job`
gives each job its CPU time (:mod:`.limits`). :meth:`stop` runs the ``on_child_stop`` hooks once
the child's input has ended and its last job is answered; their errors go to stderr. ``async
def`` hooks run on the child's event loop, through ``run``.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..hooks import hook_name
from ..queue import Queue
from .limits import parse_args

__all__ = ("Lifecycle",)


class Lifecycle:
    """Runs ``queue``'s start hooks now; ``run(awaitable)`` runs an async hook's awaitable on
    the child's event loop and returns its value; ``args`` are the limits the supervisor gave
    the child on its command line.

    :raises BaseException: whatever a start hook raised, with a note naming the hook.
    """

    def __init__(
        self, queue: Queue, run: Callable[[Awaitable[Any]], Any], args: Sequence[str] = ()
    ) -> None:
        self.queue = queue
        self._run = run
        self.cpu = parse_args(args)
        for hook in queue.child_hooks("start"):
            try:
                self._call(hook)
            except BaseException as exc:
                exc.add_note(f"(in the on_child_start hook {hook_name(hook)})")
                raise

    def before_job(self) -> None:
        """A job is about to start: give it its CPU time."""
        self.cpu.before_job()

    def stop(self) -> None:
        """Run the stop hooks, each whatever the others did, free of any job's CPU limit;
        errors are written to stderr."""
        self.cpu.disarm()
        for hook in self.queue.child_hooks("stop"):
            try:
                self._call(hook)
            except Exception:
                name = hook_name(hook)
                print(f"aioqueue: the on_child_stop hook {name} raised:", file=sys.stderr)
                traceback.print_exc()

    def _call(self, hook: Callable[[], object]) -> None:
        value = hook()
        if inspect.isawaitable(value):
            self._run(value)
