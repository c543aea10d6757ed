"""Mapping of Redis client errors to aioqueue's own, with the URL (password hidden) named."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any

from redis import exceptions as rex

from .connect import CLUSTER_RETRY_ON, SCHEMES, parse
from .errors import AioqueueError, InvalidOptions, RedisOutOfMemory, RedisRefused, RedisUnavailable

__all__ = (
    "SCHEMES",
    "as_error",
    "call_redis",
    "check_url",
    "is_transient",
    "safe_url",
    "to_str",
)

#: A lost link, Redis loading, and on a cluster a failover or slot move under way.
TRANSIENT: tuple[type[Exception], ...] = (*CLUSTER_RETRY_ON, OSError)


def safe_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def to_str(v: bytes | str) -> str:
    """A Redis reply's bytes as text."""
    return v.decode() if isinstance(v, bytes) else v


def is_transient(exc: BaseException) -> bool:
    """True for errors that a reconnect with backoff can cure (lost link, Redis loading)."""
    return isinstance(exc, TRANSIENT)


def check_url(url: str) -> str:
    """Return ``url`` if the Redis client accepts it.

    :raises InvalidOptions: naming the URL (password hidden) and what is wrong with it.
    """
    if not isinstance(url, str) or not url.lower().startswith(SCHEMES):
        raise InvalidOptions(
            f"redis_url {safe_url(str(url))!r} is not a Redis URL: "
            f"use one of the schemes {', '.join(SCHEMES)}"
        )
    try:
        parse(url)
    except ValueError as exc:
        raise InvalidOptions(f"redis_url {safe_url(url)!r} is invalid: {exc}") from None
    return url


def as_error(exc: Exception, url: str) -> Exception:
    """aioqueue's error for a Redis client error (any other exception is returned as is)."""
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
    except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
        raise as_error(exc, url) from exc
