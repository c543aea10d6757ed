"""The worker: a supervisor on one event loop and a pool of child processes.

``Worker`` and ``WorkerSettings`` are imported on first use, so that a child process, which
imports this package only for its ``_child`` module, doesn't load the supervisor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import WorkerSettings as WorkerSettings
    from .supervisor import Worker as Worker

__all__ = ("Worker", "WorkerSettings")


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from .supervisor import Worker

        return Worker
    if name == "WorkerSettings":
        from .settings import WorkerSettings

        return WorkerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
