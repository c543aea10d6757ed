"""Mapping of Redis client errors to aioqueue's own, with the URL (password hidden) named.

redis-py's error classes are looked at only once a call has failed, so this module loads no
client: a process that never talks to Redis (a worker's child) doesn't load redis-py.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from .errors import AioqueueError, RedisOutOfMemory, RedisRefused, RedisUnavailable
from .urls import safe_url

__all__ = ("as_error", "call_redis", "to_str")


def to_str(v: bytes | str) -> str:
    """A Redis reply's bytes as text."""
    return v.decode() if isinstance(v, bytes) else v


def as_error(exc: Exception, url: str) -> Exception:
    """aioqueue's error for a Redis client error (any other exception is returned as is)."""
    from redis import exceptions as rex  # loaded by now: a client raised it

    from .connect import TRANSIENT

    where = f"Redis at {safe_url(url)}"
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return RedisUnavailable(f"{where} refused the credentials: {type(exc).__name__}: {exc}")
    if isinstance(exc, TRANSIENT):  # CLUSTERDOWN and TRYAGAIN are error replies too
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return RedisUnavailable(
                f"{where}: its TLS certificate was not accepted (check ssl_ca_certs and the host "
                f"name in the URL): {type(exc).__name__}: {exc}"
            )
        return RedisUnavailable(f"{where} is unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.ResponseError):
        # Redis 7 replies OOM (redis-py's OutOfMemoryError); a script on Redis 6 wraps it
        if isinstance(exc, rex.OutOfMemoryError) or "OOM command not allowed" in str(exc):
            return RedisOutOfMemory(
                f"{where} is out of memory (maxmemory reached): {exc}; nothing was written"
            )
        return RedisRefused(f"{where} refused a command: {exc}")
    if isinstance(exc, rex.InvalidResponse):
        return RedisUnavailable(
            f"the server at {safe_url(url)} does not speak the Redis protocol "
            f"(is the URL's port a Redis port?): {exc}"
        )
    if isinstance(exc, rex.RedisError | rex.RedisClusterException):
        return AioqueueError(f"{where}: {type(exc).__name__}: {exc}")
    return exc


async def call_redis(aw: Awaitable[Any], url: str) -> Any:
    """Await a Redis call; raise aioqueue's errors instead of the client's:
    :class:`RedisUnavailable` (unreachable, loading, refusing the credentials, or not speaking
    the Redis protocol), :class:`RedisOutOfMemory`, :class:`RedisRefused` (any other error reply).
    """
    try:
        return await aw
    except Exception as exc:
        error = as_error(exc, url)
        if error is exc:  # not the client's: as it came
            raise
        raise error from exc
