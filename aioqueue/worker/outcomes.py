"""What came of an attempt, as the outcome to record: a result, a retry or a dead letter."""

from __future__ import annotations

import logging
import math
import random
import time

import msgspec

from .. import wire
from .._text import count
from ..queue import Queue
from ..scripts import FinishItem
from ._state import Held
from .logs import job_fields
from .retry import retry_delay
from .settings import WorkerSettings

__all__ = ("Outcomes",)

log = logging.getLogger("aioqueue.worker")


class Outcomes:
    """Builds the :class:`FinishItem` for each way a job can end, with the queue's TTLs and the
    worker's retry policy; ``worker`` (its id) is named in the log lines about jobs."""

    def __init__(self, queue: Queue, settings: WorkerSettings, worker: str = "") -> None:
        self.queue = queue
        self.settings = settings
        self.worker = worker

    def _ttl_ms(self, held: Held) -> int:
        env = held.env
        ttl = env.result_ttl if env is not None and env.result_ttl else self.queue.result_ttl
        return int(ttl * 1000)

    def _dedup(self, held: Held) -> str | None:
        return held.env.key if held.env is not None else None

    def retries(self, env: wire.Envelope | None) -> int:
        """Attempts after the first: the job's own setting, else its task's (0 if unknown)."""
        if env is None:
            return 0
        if env.retries is not None:
            return env.retries
        td = self.queue.tasks.get(env.task)
        return td.retries if td is not None else 0

    def success(self, held: Held, value: msgspec.Raw) -> FinishItem:
        outcome = wire.Outcome(
            v=wire.WIRE_VERSION, task=held.task, ok=True, value=value,
            attempts=held.attempts, finished=time.time(),
        )  # fmt: skip
        return FinishItem(
            held.id, held.token, "ok", result=wire.encode(outcome), ttl_ms=self._ttl_ms(held),
            dedup=self._dedup(held), group=_group(held),
        )  # fmt: skip

    def release(self, held: Held, delay: float = 0.0) -> FinishItem:
        """Hand the job back, its attempt uncounted: at once, or in ``delay`` seconds (a
        snooze)."""
        return FinishItem(
            held.id, held.token, "release", result=self._cancelled(held),
            delay_ms=math.ceil(delay * 1000), group=_group(held),
        )  # fmt: skip

    def cancelled(self, held: Held, why: wire.ErrorInfo | None = None) -> FinishItem:
        """A job stopped because a producer cancelled it, or never started because it expired
        (``why``): no retry."""
        return FinishItem(
            held.id, held.token, "cancel", result=self._cancelled(held, why),
            ttl_ms=self._ttl_ms(held), dedup=self._dedup(held), group=_group(held),
        )  # fmt: skip

    def expired(self, held: Held, expires: float) -> FinishItem:
        """A job claimed after its expiry: recorded cancelled, with the reason, unrun."""
        late = time.time() - expires
        why = wire.ErrorInfo(
            type="Expired", message=f"it expired {late:.3f} s before a worker could start it",
            attempt=held.attempts, kind="expired",
        )  # fmt: skip
        log.info("job %s: %s expired %.3f s ago; not started", held.id, held.task, late,
                 extra=job_fields(held, self.worker, "cancelled"))  # fmt: skip
        return self.cancelled(held, why)

    def _cancelled(self, held: Held, why: wire.ErrorInfo | None = None) -> bytes:
        """The outcome recorded if the job turns out to be cancelled (the finish script turns
        a retry or a release of a job whose cancel was asked into a cancel)."""
        outcome = wire.Outcome(
            v=wire.WIRE_VERSION, task=held.task, ok=False, cancelled=True, error=why,
            attempts=held.attempts, finished=time.time(),
        )  # fmt: skip
        return wire.encode(outcome)

    def failure(
        self,
        held: Held,
        err: wire.ErrorInfo,
        retries: int | None = None,
        *,
        reaping: bool = False,
        after: float | None = None,
    ) -> FinishItem:
        """A failed attempt: retried after backoff while retries are left, else dead-lettered.

        ``retries=None``: the job's own; ``reaping``: a lost worker's job, retried at once;
        ``after``: the delay the task asked for, instead of the backoff.
        """
        s = self.settings
        err = msgspec.structs.replace(err, attempt=held.attempts)
        if retries is None:
            retries = self.retries(held.env)
        delay = retry_delay(
            held.attempts, retries, backoff=s.retry_backoff, backoff_max=s.retry_backoff_max,
            jitter=random.random(), immediate=reaping,
        )  # fmt: skip
        if delay is not None and after is not None:
            delay = after
        ttl_ms, dedup = self._ttl_ms(held), self._dedup(held)
        if delay is not None:
            log.info(
                "job %s: %s attempt %d failed (%s: %s); retry in %.2fs",
                held.id, held.task, held.attempts, err.type, err.message, delay,
                extra=job_fields(held, self.worker, "retried"),
            )  # fmt: skip
            return FinishItem(
                held.id, held.token, "retry", result=self._cancelled(held),
                error=wire.encode(err), delay_ms=math.ceil(delay * 1000), ttl_ms=ttl_ms,
                dedup=dedup, reaping=reaping, group=_group(held),
            )  # fmt: skip
        log.warning(
            "job %s: %s failed after %s (%s: %s); dead-lettered",
            held.id, held.task, count(held.attempts, "attempt"), err.type, err.message,
            extra=job_fields(held, self.worker, "dead"),
        )  # fmt: skip
        outcome = wire.Outcome(
            v=wire.WIRE_VERSION, task=held.task, ok=False, error=err, attempts=held.attempts,
            finished=time.time(),
        )  # fmt: skip
        return FinishItem(
            held.id, held.token, "dead", result=wire.encode(outcome), error=wire.encode(err),
            ttl_ms=ttl_ms, dedup=dedup, reaping=reaping, group=_group(held),
        )  # fmt: skip

    def dead(self, held: Held, type_: str, message: str, kind: str, tb: str = "") -> FinishItem:
        """A job that can't run at all (malformed, unknown task): dead-lettered at once."""
        err = wire.ErrorInfo(type=type_, message=message, traceback=tb, kind=kind)
        return self.failure(held, err, retries=0)

    def reply(self, held: Held, reply: wire.ChildReply) -> FinishItem:
        """What a child's reply means for the job."""
        if reply.ok:
            return self.success(held, reply.value)
        err = reply.error or wire.ErrorInfo(type="Error", message="unknown failure")
        if err.kind in ("malformed", "unknown_task"):
            return self.dead(held, err.type, err.message, err.kind, err.traceback)
        if err.kind == "snooze":
            log.info("job %s: %s snoozed for %.3g s", held.id, held.task, reply.delay or 0.0,
                     extra=job_fields(held, self.worker, "snoozed"))  # fmt: skip
            return self.release(held, reply.delay or 0.0)
        return self.failure(held, err, after=reply.delay if err.kind == "retry" else None)

    def lost(self, held: Held) -> FinishItem:
        """An expired lease found by recovery: the holder's attempt failed as WorkerLost."""
        holder = held.token.rpartition(":")[0] or "?"
        if held.job.holder_alive:
            why = (
                f"the lease expired while its worker {holder} was still heartbeating: the "
                "worker held the job without renewing its lease (its supervisor loop stalled, "
                "or it lost track of the job)"
            )
        else:
            why = (
                f"the lease expired: its worker {holder} stopped heartbeating (killed, crashed, "
                "paused or cut off from Redis)"
            )
        err = wire.ErrorInfo(type="WorkerLost", message=why, kind="lost")
        return self.failure(held, err, reaping=True)


def _group(held: Held) -> str:
    """The job's concurrency group ('' if none): its final outcome frees the group's slot."""
    env = held.env
    return env.group or "" if env is not None else ""
