"""A worker child's life around its jobs: the queue's start hooks, then its stop hooks.

:class:`Lifecycle` runs the queue's ``on_child_start`` hooks when it is made, before the child
says it is ready, so that a hook that raises fails the child's start as an import error does
(the traceback, with a note naming the hook, is what the supervisor reports). :meth:`stop` runs
the ``on_child_stop`` hooks once the child's input has ended and its last job is answered; their
errors go to stderr. ``async def`` hooks run on the child's event loop, through ``run``.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from ..hooks import hook_name
from ..queue import Queue

__all__ = ("Lifecycle",)


class Lifecycle:
    """Runs ``queue``'s start hooks now; ``run(awaitable)`` runs an async hook's awaitable on
    the child's event loop and returns its value.

    :raises BaseException: whatever a start hook raised, with a note naming the hook.
    """

    def __init__(self, queue: Queue, run: Callable[[Awaitable[Any]], Any]) -> None:
        self.queue = queue
        self._run = run
        for hook in queue.child_hooks("start"):
            try:
                self._call(hook)
            except BaseException as exc:
                exc.add_note(f"(in the on_child_start hook {hook_name(hook)})")
                raise

    def stop(self) -> None:
        """Run the stop hooks, each whatever the others did; errors are written to stderr."""
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
