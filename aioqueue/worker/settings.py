"""How a worker runs: the one definition of every worker setting."""

from __future__ import annotations

import os

import msgspec

__all__ = ("WorkerSettings",)


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How a worker runs. Times are in seconds.

    With the defaults, a SIGKILLed worker's jobs are back in work within
    ``lease + maintenance_interval`` (6 s).
    """

    processes: int = msgspec.field(default_factory=lambda: os.cpu_count() or 1)
    prefetch: int = 0  # jobs claimed beyond the free children (0: never hold a job no child runs)
    burst: bool = False  # exit once the queue is empty and nothing is in flight
    heartbeat: float = 1.0
    lease: float = 5.0
    maintenance_interval: float = 1.0
    block_timeout: float = 2.0  # longest blocking wait on Redis (always below the socket timeout)
    grace: float = 30.0  # on SIGTERM, how long running jobs may finish before they are handed back
    max_tasks_per_child: int | None = None
    retry_backoff: float = 1.0  # first retry's delay; doubles per attempt, with jitter
    retry_backoff_max: float = 300.0
    kill_grace: float = 1.0  # between TERM and KILL of a child
    handle_signals: bool = True

    def validate(self) -> None:
        """:raises ValueError: naming the setting out of range."""
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        for name in ("heartbeat", "lease", "maintenance_interval", "block_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.lease <= self.heartbeat:
            raise ValueError(
                f"lease ({self.lease}) must be longer than heartbeat ({self.heartbeat})"
            )
        if self.max_tasks_per_child is not None and self.max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be >= 1, got {self.max_tasks_per_child}")
