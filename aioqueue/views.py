"""What the read-only administration scripts return: a queue's overview, its workers, a job."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._redis import to_str

__all__ = ("JobRow", "Overview", "WorkerAbout", "last_minute")


@dataclass(frozen=True, slots=True)
class Overview:
    """A queue as ``aioqueue info`` shows it: counts, workers by heartbeat deadline (ms),
    counters, each priority level's first pending id, the leases past due, and whether the
    queue is paused."""

    now_ms: int
    pending: int
    scheduled: int
    running: int
    dead: int
    workers: dict[str, float]
    counters: dict[str, int]
    level_heads: list[str]
    more_levels: bool
    leases_past_due: int
    earliest_lease_ms: float | None
    paused: bool = False
    last_minute: dict[str, int] = field(default_factory=dict)  # completed, failed
    this_minute: dict[str, int] = field(default_factory=dict)  # so far
    about: dict[str, WorkerAbout] = field(default_factory=dict)  # by worker id


@dataclass(frozen=True, slots=True)
class WorkerAbout:
    """What a worker says of itself at each heartbeat: its processes, the jobs it holds (running
    or waiting for a child) and when it started (ms)."""

    processes: int
    in_flight: int
    started_ms: int

    def encode(self) -> str:
        return f"{self.processes} {self.in_flight} {self.started_ms}"

    @classmethod
    def decode(cls, raw: bytes | str) -> WorkerAbout:
        try:
            processes, in_flight, started = to_str(raw).split()
            return cls(int(processes), int(in_flight), int(started))
        except ValueError:  # written by another version: shown as unknown
            return cls(0, 0, 0)


def last_minute(fields: dict[str, int], now_ms: int, ago: int = 1) -> dict[str, int]:
    """Completed and failed attempts in the minute ``ago`` minutes before this one (0: this
    minute so far; only 0 and 1 are kept), from the stats hash (see lua/_minute.lua)."""
    minute = now_ms // 60000 - ago
    slot = minute % 2
    if ago not in (0, 1) or fields.get(f"minute:{slot}") != minute:
        return {"completed": 0, "failed": 0}
    return {k: fields.get(f"{k}:{slot}", 0) for k in ("completed", "failed")}


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as stored: its state, envelope, attempts, lease, times (ms), errors, outcome."""

    now_ms: int
    state: str
    data: bytes | None
    attempts: int
    token: str | None
    lease_ms: float | None
    run_at_ms: float | None
    dead_at_ms: float | None
    errors: bytes | None
    outcome: bytes | None
