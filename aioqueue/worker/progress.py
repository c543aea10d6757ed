"""The progress writer: running jobs' progress reports, recorded and published in batches.

A child sends each job's reports at most every ``context.MIN_INTERVAL`` seconds; the writer
keeps only the latest one per job until it is written, so however often tasks report, Redis
sees at most one write per job per round trip. Through a Redis outage the latest report per
job waits and is written once Redis answers; reports Redis refuses otherwise are dropped with
an error in the log (progress never holds up a job). Outcomes are recorded only after the
reports that came before them (see :meth:`ProgressWriter.settled`), so a retried job always
finds its last checkpoint.
"""

from __future__ import annotations

import logging

import anyio

from ..errors import RedisOutOfMemory, RedisUnavailable
from ..scripts import Scripts
from ._state import Held, Outage
from .backoff import Backoff

__all__ = ("ProgressWriter",)

log = logging.getLogger("aioqueue.worker")


class ProgressWriter:
    """The latest unwritten report of each held job, and the task that writes them."""

    def __init__(self, scripts: Scripts, outage: Outage) -> None:
        self.scripts = scripts
        self.outage = outage
        self.written = 0  # reports recorded
        self._latest: dict[str, tuple[Held, bytes]] = {}
        self._writing = False
        self._ready = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()

    def put(self, held: Held, report: bytes) -> None:
        """A job reported its progress (the encoded ``wire.Progress``)."""
        if held.lost or held.finishing:
            return
        self._latest[held.id] = (held, report)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._ready.set()

    @property
    def busy(self) -> bool:
        """Reports wait to be written, or are being written."""
        return bool(self._latest) or self._writing

    async def settled(self) -> None:
        """Wait until every report put so far is written (or dropped: the lease was lost)."""
        while self.busy:
            await self._idle.wait()

    async def run(self) -> None:
        backoff = Backoff(cap=1.0)
        while True:
            if not self._latest:
                self._ready = anyio.Event()
                await self._ready.wait()
                continue
            batch, self._latest = self._latest, {}
            self._writing = True
            try:
                while True:
                    reports = [
                        (held.id, held.token, report)
                        for held, report in batch.values()
                        if not held.lost
                    ]
                    try:
                        self.written += await self.scripts.progress(reports) if reports else 0
                    except (RedisUnavailable, RedisOutOfMemory) as exc:
                        self.outage.failed("recording progress", exc)
                        await backoff.sleep()
                        for job_id, newer in self._latest.items():  # keep the latest only
                            batch[job_id] = newer
                        self._latest.clear()
                        continue
                    except Exception as exc:  # not Redis's state: these reports can't be written
                        log.error("progress reports of %d jobs dropped: %s", len(reports), exc)
                    break
            finally:
                self._writing = False
            self.outage.ok()
            backoff.reset()
            if not self._latest:
                self._idle.set()
