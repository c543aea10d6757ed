"""What the read-only administration scripts return: a queue's overview, its workers, a job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._redis import to_str

__all__ = ("JobRow", "Overview", "ScheduleRow", "WorkerAbout", "last_minute", "schedule_rows")


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
    schedules: list[ScheduleRow] = field(default_factory=list)
    waiting: int = 0  # jobs waiting for others to finish (options(after=...))


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A periodic job as the workers firing it last wrote it: what it runs and when (ms)."""

    name: str
    about: str
    last_ms: int | None
    next_ms: int | None


def schedule_rows(flat: list[Any]) -> list[ScheduleRow]:
    """The schedules hash (name -> last tick, name:next, name:about) as rows, by name."""
    fields = {to_str(flat[i]): to_str(flat[i + 1]) for i in range(0, len(flat), 2)}
    names = sorted({f.split(":", 1)[0] for f in fields})
    return [
        ScheduleRow(
            name=n,
            about=fields.get(f"{n}:about", ""),
            last_ms=int(fields[n]) if n in fields else None,
            next_ms=int(fields[f"{n}:next"]) if f"{n}:next" in fields else None,
        )
        for n in names
    ]


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
    """One job as stored: its state, envelope, attempts, lease, times (ms), errors, outcome,
    and its last progress report."""

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
    progress: bytes | None = None
