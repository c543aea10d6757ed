"""The values the scripts take and give: receipts, new jobs, leased jobs, outcomes to record,
and the read-only replies, as :mod:`aioqueue.scripts` passes them in and parses them out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from .keys import Keys

__all__ = (
    "PRODUCER_RECEIPT_MS",
    "ClaimReply",
    "DeadRow",
    "FinishItem",
    "FinishKind",
    "InfoReply",
    "LeasedJob",
    "NewJob",
    "Receipt",
)

FinishKind = Literal["ok", "retry", "dead", "release", "cancel"]

PRODUCER_RECEIPT_MS = 300_000  # a producer's re-sends come within seconds


@dataclass(frozen=True, slots=True)
class Receipt:
    """Names one call, so that a re-send of it (same ``call``) gets the first reply.

    :ivar key: where the reply is kept; a worker keeps one per channel (fetch, finish, ...), since
        it sends one call at a time on each and re-sends an unanswered one before the next.
    :ivar call: the call's id, unique under ``key``.
    :ivar ttl_ms: how long the reply is kept.
    """

    key: str
    call: str
    ttl_ms: int

    @classmethod
    def once(cls, keys: Keys, kind: str | None = None) -> Receipt:
        """A receipt for one producer call (cancel, requeue, purge); with ``kind``, under the
        queue's one receipt key for that kind of call (pause, resume), which ``aioqueue purge``
        knows by name: a re-send still finds it unless another such call came in between."""
        call = os.urandom(8).hex()
        if kind is not None:
            return cls(keys.receipt(kind), call, PRODUCER_RECEIPT_MS)
        return cls(keys.receipt(call), "1", PRODUCER_RECEIPT_MS)


@dataclass(slots=True)
class NewJob:
    """One job to submit, checked and encoded: its id, encoded envelope, and where it goes."""

    id: str
    data: bytes
    priority: int = 0
    delay_ms: int = 0
    key: str | None = None  # de-duplication key
    after: tuple[str, ...] = ()  # the jobs it runs after
    group: str | None = None  # per-key concurrency: at most group_limit of its group at once
    group_limit: int = 1
    rate: str = ""  # "key count period_ms": at most count starts of the key per period
    debounce: bool = False  # its key debounces: see lua/submit.lua


@dataclass(slots=True)
class LeasedJob:
    """A job under a lease: from a claim (ours) or from the expired leases (someone's)."""

    id: str
    token: str
    attempts: int
    data: bytes
    holder_alive: bool = True  # expired leases: does the holder still heartbeat?
    progress: bytes | None = None  # claims: the job's last progress report, if any


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """What a claim gave: jobs leased, ms until the next scheduled job (-1: none), stale skipped,
    and whether the queue is paused (then no job was leased, and no wake-up token left behind)."""

    jobs: list[LeasedJob]
    next_due_ms: int
    stale: int
    paused: bool = False


@dataclass(frozen=True, slots=True)
class FinishItem:
    """One outcome to record, fenced by the lease token it was run under."""

    id: str
    token: str
    kind: FinishKind
    result: bytes = b""  # encoded Outcome (ok, dead)
    error: bytes = b""  # encoded ErrorInfo (retry, dead)
    delay_ms: int = 0  # retry
    ttl_ms: int = 0  # result and de-duplication key TTL
    dedup: str | None = None
    reaping: bool = False  # recovering someone's expired lease
    group: str = ""  # the job's concurrency group, if any: a final outcome frees its slot


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead letter as stored: id, when (ms), envelope and error records (None if missing)."""

    id: str
    dead_at_ms: float
    data: bytes | None
    errors: bytes | None


@dataclass(frozen=True, slots=True)
class InfoReply:
    """A queue's counts, workers by heartbeat deadline, and counters, read in one step."""

    pending: int
    scheduled: int
    running: int
    dead: int
    live_workers: list[str]
    gone_workers: list[str]
    counters: dict[str, int]
    paused: bool = False
    last_minute: dict[str, int] | None = None
    waiting: int = 0
