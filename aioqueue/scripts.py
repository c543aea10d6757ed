"""The Lua scripts, loaded once from ``lua/*.lua`` and registered once per Redis client."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ("Scripts",)

_NAMES = (
    "submit", "claim", "heartbeat", "expired", "finish", "requeue", "purge", "cancel", "status",
    "outcomes",
)  # fmt: skip


def _source(name: str) -> str:
    return (resources.files("aioqueue") / "lua" / f"{name}.lua").read_text()


def _compose(first: str, second: str) -> str:
    """One script that runs two others in turn: one round trip, no pipeline.

    ARGV[1] and ARGV[2] give how many KEYS and ARGV belong to the first; the rest go to the
    second. Returns ``{first's reply, second's reply}``.
    """
    return f"""-- {first} then {second}, composed from {first}.lua and {second}.lua
local function run_{first}(KEYS, ARGV)
{_source(first)}
end
local function run_{second}(KEYS, ARGV)
{_source(second)}
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local k1, a1, k2, a2 = {{}}, {{}}, {{}}, {{}}
for i = 1, #KEYS do
  if i <= nk then k1[#k1 + 1] = KEYS[i] else k2[#k2 + 1] = KEYS[i] end
end
for i = 3, #ARGV do
  if i - 2 <= na then a1[#a1 + 1] = ARGV[i] else a2[#a2 + 1] = ARGV[i] end
end
return {{run_{first}(k1, a1), run_{second}(k2, a2)}}
"""


_SOURCES = {name: _source(name) for name in _NAMES}
_SOURCES["finish_claim"] = _compose("finish", "claim")


class Scripts:
    """The queue's scripts bound to one client; each call is an ``EVALSHA`` that reloads itself."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(src) for name, src in _SOURCES.items()
        }

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` with ``keys`` and ``args``."""
        return await self._scripts[name](keys=keys, args=args)

    async def call_pair(
        self, name: str, first: tuple[list[str], list[Any]], second: tuple[list[str], list[Any]]
    ) -> list[Any]:
        """Run a composed script (``finish_claim``): both parts in one round trip."""
        (k1, a1), (k2, a2) = first, second
        reply = await self._scripts[name](keys=k1 + k2, args=[len(k1), len(a1), *a1, *a2])
        return list(reply)

    def sha(self, name: str) -> str:
        """The SHA1 of a script (for fault injection that targets one script)."""
        return str(self._scripts[name].sha)
