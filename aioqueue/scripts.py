"""The Lua scripts, loaded once from ``lua/*.lua`` and registered once per Redis client."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ("Scripts",)

_NAMES = ("submit", "claim", "heartbeat", "expired", "finish", "requeue", "purge", "cancel")


def _source(name: str) -> str:
    return (resources.files("aioqueue") / "lua" / f"{name}.lua").read_text()


_SOURCES = {name: _source(name) for name in _NAMES}


class Scripts:
    """The queue's scripts bound to one client; each call is an ``EVALSHA`` that reloads itself."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(src) for name, src in _SOURCES.items()
        }

    async def call(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """Run script ``name``; with a pipeline as ``client``, queue it there."""
        return await self._scripts[name](keys=keys, args=args, client=client)

    def sha(self, name: str) -> str:
        """The SHA1 of a script (for fault injection that targets one script)."""
        return str(self._scripts[name].sha)
