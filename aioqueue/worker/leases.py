"""Leases: heartbeats that extend this worker's leases, and recovery of expired ones.

Heartbeats run on the supervisor's event loop, which CPU work never blocks, so leases can be
short. Recovery runs in every worker and is safe when several run it at once: the finish script
acts only on a lease that is still expired, and tells the others there is nothing to recover.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import anyio

from ..scripts import FinishItem, Receipt
from ..views import WorkerAbout
from ._state import Held, envelope_of
from .logs import job_fields

if TYPE_CHECKING:
    from .supervisor import Worker

__all__ = ("heartbeat_loop", "recovery_loop")

log = logging.getLogger("aioqueue.worker")

RECOVER_BATCH = 100


async def heartbeat_loop(w: Worker) -> None:
    """Extend the leases of every held job; abandon the ones whose lease was lost.

    Each beat's result is kept (``w.beat_at``, ``w.beat_error``) for the readiness check."""
    first = True
    while True:
        if not first:  # the first beat registers the worker at once
            await anyio.sleep(w.settings.heartbeat)
        first = False
        pairs = [(h.id, h.token) for h in w.held.values()]
        try:
            about = WorkerAbout(w.settings.processes, len(pairs), w.started_ms)
            lost, stop = await w.scripts.heartbeat(
                w.id, w.lease_ms, pairs, w.beat_channel.next(), about
            )
        except Exception as exc:
            w.beat_error = f"{type(exc).__name__}: {exc}"
            w.outage.failed("heartbeat", exc)
            continue
        w.beat_at, w.beat_error = time.monotonic(), None
        w.outage.ok()
        for job_id in lost:
            held = w.held.get(job_id)
            if held is None:
                continue
            w.counters["lease_lost"] += 1
            if held.finishing:
                continue  # an outcome on its way is fenced by the finish script if need be
            held.lost = True
            log.warning(
                "job %s: lease lost (presumed dead or cut off); abandoning", held.id,
                extra=job_fields(held, w.id, "lost"),
            )  # fmt: skip
            if held.work is not None and w.pool is not None:
                w.pool.cancel(held.work)
        for job_id in stop:
            held = w.held.get(job_id)
            if held is not None and not held.finishing and job_id not in w.cancelling:
                w.cancelling.add(job_id)
                log.info("job %s: cancel asked; stopping it", job_id,
                         extra=job_fields(held, w.id, "cancelled"))  # fmt: skip
                if held.work is not None and w.pool is not None:
                    w.pool.cancel(held.work)


async def recovery_loop(w: Worker) -> None:
    """Every ``maintenance_interval`` (jittered): recover jobs whose lease expired."""
    unanswered: tuple[Receipt, list[Held], list[FinishItem]] | None = None
    while True:
        await anyio.sleep(w.settings.maintenance_interval * (0.75 + random.random() / 2))
        try:
            if unanswered is None:
                rows = await w.scripts.expired(RECOVER_BATCH, w.dead)
                if not rows:
                    continue
                helds = [Held(j, envelope_of(j.data)) for j in rows]
                unanswered = (w.reap_channel.next(), helds, [w.outcomes.lost(h) for h in helds])
            receipt, helds, items = unanswered
            replies = await w.scripts.finish(items, receipt, w.dead)
        except Exception as exc:
            w.outage.failed("recovering expired leases", exc)
            continue
        unanswered = None
        for held, item, applied in zip(helds, items, replies, strict=True):
            w.count(held, item, applied)
        n = sum(1 for r in replies if r == 1)
        if n:
            log.warning("recovered %d jobs whose lease expired", n)
