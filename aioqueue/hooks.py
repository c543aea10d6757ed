"""Child lifecycle hooks: what each worker child process runs when it starts and when it stops.

Declared on the queue, next to its tasks, so that every child that imports the queue has them::

    @queue.on_child_start
    def load_model() -> None:
        global model
        model = Model.load("weights.bin")  # once per child, not once per job

The worker's child runs them (:mod:`aioqueue.worker._lifecycle`); producers only keep them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal, TypeVar

from .errors import InvalidOptions

__all__ = ("ChildHooks", "Hook")

Hook = Callable[[], object]  # no arguments; sync, or async (returns an awaitable)
H = TypeVar("H", bound=Hook)
When = Literal["start", "stop"]


class ChildHooks:
    """The hooks part of :class:`~aioqueue.Queue`: ``on_child_start`` and ``on_child_stop``."""

    def on_child_start(self, fn: H, /) -> H:
        """Register ``fn`` to run in every worker child once it has imported the queue and
        before it takes a job: load a model, open a connection pool. It takes no arguments;
        an ``async def`` hook runs on the child's event loop, the one its ``async def`` tasks
        run on. Hooks run in the order registered, and count toward the worker's
        ``start_timeout``.

        A hook that raises makes the child fail to start, as a task module that does not
        import would: the worker claims nothing for it and tries again, and after
        ``max_start_failures`` failures in a row hands its jobs back and exits non-zero, with
        the hook's traceback in its log.

        :raises InvalidOptions: if ``fn`` can't be called without arguments.
        """
        self.child_hooks("start").append(_checked(fn, "on_child_start"))
        return fn

    def on_child_stop(self, fn: H, /) -> H:
        """Register ``fn`` to run in every worker child that ends normally: its input ended
        (the worker stops, or replaces it after ``max_tasks_per_child`` jobs or once it holds
        more than ``max_memory_per_child``). A child that is killed (a timeout, a cancel, the
        ``memory_limit``) or crashes runs none. It takes no arguments; ``async def`` hooks run
        on the child's event loop. An error is written to the worker's stderr and the next hook
        runs; the child's jobs are all answered by then, so none is lost. The child gets the
        worker's ``kill_grace`` to exit, hooks included.

        :raises InvalidOptions: if ``fn`` can't be called without arguments.
        """
        self.child_hooks("stop").append(_checked(fn, "on_child_stop"))
        return fn

    def child_hooks(self, when: When) -> list[Hook]:
        """The hooks registered to run ``when`` a child starts or stops, in order."""
        hooks: dict[When, list[Hook]] | None = self.__dict__.get("_child_hooks")
        if hooks is None:
            hooks = self.__dict__.setdefault("_child_hooks", {"start": [], "stop": []})
        return hooks[when]


def hook_name(fn: Hook) -> str:
    """``module.qualname`` of a hook, for messages."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else name


def _checked(fn: H, what: str) -> H:
    if not callable(fn):
        raise InvalidOptions(f"{what} takes a function, got {fn!r}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: they will tell when called
        return fn
    try:
        signature.bind()
    except TypeError as exc:
        raise InvalidOptions(
            f"{what} hook {hook_name(fn)} must take no arguments ({exc})"
        ) from None
    return fn
