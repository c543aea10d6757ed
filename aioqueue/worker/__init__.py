"""The worker: a supervisor on one event loop and a pool of child processes."""

from __future__ import annotations

from .settings import WorkerSettings as WorkerSettings
from .supervisor import Worker as Worker

__all__ = ("Worker", "WorkerSettings")
