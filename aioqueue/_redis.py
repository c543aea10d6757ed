"""Mapping of Redis client errors to aioqueue's own, with the URL (password hidden) named."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any

from redis import exceptions as rex

from .errors import RedisOutOfMemory, RedisUnavailable

__all__ = ("call_redis", "is_transient", "safe_url", "to_str")

TRANSIENT = (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, OSError)


def safe_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def to_str(v: bytes | str) -> str:
    """A Redis reply's bytes as text."""
    return v.decode() if isinstance(v, bytes) else v


def is_transient(exc: BaseException) -> bool:
    """True for errors that a reconnect with backoff can cure (lost link, Redis loading)."""
    return isinstance(exc, TRANSIENT)


async def call_redis(aw: Awaitable[Any], url: str) -> Any:
    """Await a Redis call; raise :class:`RedisUnavailable` or :class:`RedisOutOfMemory` instead
    of the client's errors where those apply.
    """
    try:
        return await aw
    except rex.ResponseError as exc:
        # Redis 7 replies OOM (redis-py's OutOfMemoryError); a script on Redis 6 wraps it
        if isinstance(exc, rex.OutOfMemoryError) or "OOM command not allowed" in str(exc):
            raise RedisOutOfMemory(
                f"Redis at {safe_url(url)} is out of memory (maxmemory reached): {exc}; "
                "nothing was written"
            ) from exc
        raise
    except TRANSIENT as exc:
        raise RedisUnavailable(
            f"Redis at {safe_url(url)} is unavailable: {type(exc).__name__}: {exc}"
        ) from exc
