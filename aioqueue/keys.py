"""Every Redis key name of a queue; all share one hash tag so a queue lives on one cluster slot."""

from __future__ import annotations

import re

__all__ = ("REGISTRY", "Keys", "validate_queue_name")

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

#: The set of queue names in use, kept by ``Queue.register()``; read by ``aioqueue info``.
REGISTRY = "aioqueue:queues"


def validate_queue_name(name: str) -> str:
    """Return ``name`` if it is a valid queue name, else raise ``ValueError`` saying why."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"invalid queue name {name!r}: use 1-128 characters of letters, digits, '_.:-'"
        )
    return name


class Keys:
    """Key names under ``aioqueue:{NAME}:``.

    Fixed per-queue keys are attributes; per-job keys are methods taking the job id.
    """

    __slots__ = (
        "prefix", "jobs", "pending", "scheduled", "priority", "attempts", "tokens",
        "leases", "dead", "errors", "wake", "workers", "worker_info", "stats", "done_channel",
        "paused", "schedules", "cancels", "full", "blocked", "gactive", "glimit", "rated", "tat",
        "progress",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        validate_queue_name(name)
        self.prefix = p = f"aioqueue:{{{name}}}:"
        self.jobs = p + "jobs"
        self.pending = p + "pending"
        self.scheduled = p + "scheduled"
        self.priority = p + "priority"
        self.attempts = p + "attempts"
        self.tokens = p + "tokens"
        self.leases = p + "leases"
        self.dead = p + "dead"
        self.errors = p + "errors"
        self.wake = p + "wake"
        self.workers = p + "workers"
        self.worker_info = p + "worker_info"  # worker id -> "processes in_flight started_ms"
        self.stats = p + "stats"
        self.done_channel = p + "done"
        self.paused = p + "paused"  # exists while the queue is paused: workers claim nothing
        self.cancels = p + "cancels"  # id -> ms: a cancel asked of a running job
        self.full = p + "full"  # exists while a producer waits for room (max_pending)
        self.blocked = p + "blocked"  # id -> parents not finished (a job that runs after others)
        self.gactive = p + "gactive"  # group -> slots held (per-key concurrency)
        self.glimit = p + "glimit"  # group -> its limit
        self.rated = p + "rated"  # id -> "key count period_ms" of a rate-limited job
        self.tat = p + "tat"  # rate key -> theoretical arrival time (ms): the rates' state
        self.progress = p + "progress"  # id -> the job's last reported Progress (msgpack)
        self.schedules = p + "schedules"  # name -> last tick fired (ms); name:next, name:about

    def result(self, job_id: str) -> str:
        """The string key that holds a finished job's outcome (with a TTL)."""
        return f"{self.prefix}result:{job_id}"

    def events(self, job_id: str) -> str:
        """The pub/sub channel on which a running job's progress reports are published."""
        return f"{self.prefix}events:{job_id}"

    def receipt(self, name: str) -> str:
        """The string key that keeps the reply of a call that may be re-sent (see scripts.py)."""
        return f"{self.prefix}receipt:{name}"

    def gq(self, group: str) -> str:
        """The list of a group's jobs waiting for one of its slots, in submit order."""
        return f"{self.prefix}gq:{group}"

    def after(self, job_id: str) -> str:
        """The set of the jobs that run after this one (released when it is done)."""
        return f"{self.prefix}after:{job_id}"

    def dedup(self, key: str) -> str:
        """The string key that maps a de-duplication key to the job holding it."""
        return f"{self.prefix}dedup:{key}"
