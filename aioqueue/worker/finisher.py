"""The finisher: records outcomes in batches, and keeps them through Redis outages.

Outcomes wait in one queue. The fetch loop takes some with each claim (one round trip for both);
the finisher writes the rest. It is woken for an outcome only after the callbacks already due
have run: by then a fetch loop woken by the same event has taken it with its claim, and the
finisher isn't woken for nothing. Whoever takes a batch owns it until Redis answers: a batch whose
reply was lost is re-sent as is, under the same receipt, so it is applied once and answered with
its first reply (a re-sent release is not counted as fenced). Outcomes wait for the progress
reports that came before them (progress.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._link import Link
from ..scripts import FinishItem, Scripts
from ._state import Change, Channel, Held, Outage
from .backoff import Backoff
from .progress import ProgressWriter

__all__ = ("Finisher", "Pending")

BATCH = 200


@dataclass(eq=False, slots=True)
class Pending:
    """An outcome to record for a held job."""

    held: Held
    item: FinishItem


class Finisher:
    """The queue of outcomes to write, and the task that writes them.

    :param on_done: called per outcome with what the finish script said (1 applied, 0 fenced,
        -1 lease alive, -2 nothing to recover).
    """

    def __init__(
        self,
        scripts: Scripts,
        channel: Channel,
        dead: tuple[int, int],
        outage: Outage,
        on_done: Callable[[Pending, int], None],
        reports: ProgressWriter | None = None,
    ) -> None:
        self.scripts = scripts
        self.reports = reports
        self.link = Link.of(scripts.redis)  # its own connection, held
        self.channel = channel
        self.dead = dead
        self.outage = outage
        self.on_done = on_done
        self.queue: list[Pending] = []
        self.taken = 0  # outcomes taken and not answered yet
        self._ready = asyncio.Event()
        self._settled = Change()  # a batch was answered
        self._kick: asyncio.Handle | None = None

    def put(self, held: Held, item: FinishItem) -> None:
        held.finishing = True
        self.queue.append(Pending(held, item))
        if self._kick is None:
            self._kick = asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._kick = None
        if self.queue:  # not taken with a claim meanwhile
            self._ready.set()

    def take(self, n: int = BATCH) -> list[Pending]:
        """Take up to ``n`` outcomes to write; the taker owns them until :meth:`settle`. None
        while progress reports that came before them wait to be written."""
        if self.reports is not None and self.reports.busy:
            return []
        batch = self.queue[:n]
        del self.queue[:n]
        self.taken += len(batch)
        return batch

    def settle(self, batch: Sequence[Pending], replies: Sequence[int]) -> None:
        """Redis answered for ``batch``."""
        self.taken -= len(batch)
        for p, applied in zip(batch, replies, strict=True):
            self.on_done(p, applied)
        self._settled.fire()

    async def run(self) -> None:
        """Write outcomes as they come, a batch at a time."""
        backoff = Backoff(cap=1.0)
        while True:
            if not self.queue:
                self._ready = asyncio.Event()
                await self._ready.wait()
                continue
            if self.reports is not None:
                await self.reports.settled()
            batch = self.take()
            if not batch:
                continue
            receipt = self.channel.next()
            items = [p.item for p in batch]
            while True:
                try:
                    replies = await self.scripts.finish(items, receipt, self.dead, self.link)
                except Exception as exc:
                    self.outage.failed("recording outcomes", exc)
                    await backoff.sleep()
                    continue
                break
            self.outage.ok()
            backoff.reset()
            self.settle(batch, replies)

    async def flush(self) -> None:
        """Wait until every outcome put so far is recorded."""
        while self.queue or self.taken:
            self._ready.set()
            await self._settled.wait()
