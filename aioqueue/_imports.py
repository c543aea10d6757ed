"""Import a queue from a ``MODULE:ATTR`` string, with errors that say what to fix."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ("import_queue",)


def import_queue(spec: str) -> Queue:
    """Import ``module:attr`` (a :class:`~aioqueue.Queue`), the current directory on the path.

    :raises ValueError: if ``spec`` is not of that form or the attribute is not a Queue.
    """
    from .queue import Queue

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR (for example tasks:queue), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Queue):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not an aioqueue.Queue")
    return obj
