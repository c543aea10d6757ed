"""Jittered exponential backoff for retrying calls to Redis."""

from __future__ import annotations

import random

import anyio

__all__ = ("Backoff",)


class Backoff:
    """Sleeps ``base``, then twice as long each time up to ``cap``, each jittered into its upper
    half; :meth:`reset` after a success."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.delay = base

    async def sleep(self) -> None:
        await anyio.sleep(self.delay * (0.5 + random.random() / 2))
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = self.base
