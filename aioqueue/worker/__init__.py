"""The worker: a supervisor on one event loop and a pool of child processes."""

from __future__ import annotations

from .supervisor import Worker as Worker
from .supervisor import WorkerSettings as WorkerSettings

__all__ = ("Worker", "WorkerSettings")
