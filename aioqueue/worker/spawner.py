"""Starting a pool's children: all of them at first, then one to replace each that leaves.

A replacement whose start fails (say a deploy broke the task module) is tried again after a
backoff that doubles, from 0.1 s up to 10 s; after ``max_start_failures`` failures in a row the
spawner gives up, and the pool declares itself broken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from .handle import Child, Frames, PoolStartError, spawn

__all__ = ("Spawner",)

log = logging.getLogger(__name__)

_FIRST_RETRY_DELAY = 0.1  # seconds before a failed start is tried again; doubles up to:
_MAX_RETRY_DELAY = 10.0


class Spawner:
    """Starts children for the queue at ``spec``, with ``args`` after it on their command line
    (their limits) and ``env`` added to their environment; each hands its frames to
    ``on_frames`` and its end to ``on_exit``.

    :param start_timeout: seconds a child may take to import the tasks and run the queue's
        start hooks.
    :param max_start_failures: starts in a row that may fail before :meth:`replacement` gives
        up.
    """

    def __init__(
        self,
        spec: str,
        on_frames: Callable[[Child, Frames], None],
        on_exit: Callable[[Child], None],
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        max_start_failures: int = 3,
    ) -> None:
        self.spec = spec
        self.args = tuple(args)
        self.env = dict(env or {})
        self.on_frames = on_frames
        self.on_exit = on_exit
        self.start_timeout = start_timeout
        self.max_start_failures = max(1, max_start_failures)
        self.failures = 0  # failed starts in a row
        self.children: set[Child] = set()  # every child it started that has not exited

    async def one(self) -> Child:
        """A new child, once it has imported the tasks and run the start hooks.

        :raises PoolStartError: if it could not (the child is gone by then).
        """
        child = await spawn(
            self.spec, self.start_timeout, self.on_frames, self._exited, self.args, self.env
        )
        if not child.exited.is_set():
            self.children.add(child)
        return child

    def _exited(self, child: Child) -> None:
        self.children.discard(child)
        self.on_exit(child)

    async def start(self, n: int, grace: float) -> list[Child]:
        """``n`` children, started at once, each ready.

        :raises PoolStartError: if any could not start, with its error; the ones that did are
            closed first (each given ``grace`` seconds to exit).
        """
        results = await asyncio.gather(*(self.one() for _ in range(n)), return_exceptions=True)
        children = [r for r in results if isinstance(r, Child)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(c.close(grace) for c in children))
            raise failure
        return children

    async def replacement(self, wanted: Callable[[], bool]) -> Child | None:
        """A new child, its start tried again with backoff for as long as ``wanted()``; None
        once it is no longer wanted.

        :raises PoolStartError: after ``max_start_failures`` failed starts in a row.
        """
        delay = _FIRST_RETRY_DELAY
        while wanted():
            try:
                child = await self.one()
            except PoolStartError as exc:
                self.failures += 1
                if self.failures >= self.max_start_failures:
                    n = self.failures
                    raise PoolStartError(
                        f"{n} child processes in a row failed to start; {exc}"
                    ) from None
                log.error("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            self.failures = 0
            return child
        return None
