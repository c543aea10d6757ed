"""The Lua sources of the scripts: read from ``lua/*.lua`` and composed.

Shared helpers (``_retention``, ``_minute``, ``_announce``, ``_group``) are prepended to the
scripts that use them; :func:`_with_receipt` wraps a script so that a re-sent call gets its
first reply; :func:`_compose` runs two scripts in one round trip (a finish and a claim).
"""

from __future__ import annotations

from importlib import resources

__all__ = ("SOURCES",)


def _source(name: str) -> str:
    return (resources.files("aioqueue") / "lua" / f"{name}.lua").read_text()


def _function(name: str) -> str:
    return f"local function run_{name}(KEYS, ARGV)\n{_source(name)}\nend\n"


def _compose(first: str, second: str) -> str:
    """One script that runs two others in turn: one round trip, no pipeline.

    ARGV[1] and ARGV[2] give how many KEYS and ARGV belong to the first; the rest go to the
    second. Returns ``{first's reply, second's reply}``.
    """
    return f"""{_function(first)}{_function(second)}
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


def _with_receipt(body: str) -> str:
    """Wrap a script so that a re-sent call gets its first reply.

    The last KEY is the receipt key, the last two ARGV the call id and the receipt's TTL (ms).
    The receipt holds ``call id | msgpack(reply)``; a call with the same id returns the stored
    reply and writes nothing. The body runs first, so its first write stays its own (a deletion,
    in the scripts that must work at ``maxmemory``).
    """
    return f"""local function body(KEYS, ARGV)
{body}
end
local rkey, call, ttl = KEYS[#KEYS], ARGV[#ARGV - 1], ARGV[#ARGV]
local prev = redis.call('GET', rkey)
if prev then
  local sep = string.find(prev, '|', 1, true)
  if sep and string.sub(prev, 1, sep - 1) == call then
    return cmsgpack.unpack(string.sub(prev, sep + 1))
  end
end
local k, a = {{}}, {{}}
for i = 1, #KEYS - 1 do k[i] = KEYS[i] end
for i = 1, #ARGV - 2 do a[i] = ARGV[i] end
local out = body(k, a)
redis.call('SET', rkey, call .. '|' .. cmsgpack.pack(out), 'PX', ttl)
return out
"""


_RETENTION = _source("_retention")
_MINUTE = _source("_minute")
_ANNOUNCE = _source("_announce")
_GROUP = _source("_group")
_PLAIN = ("submit", "status", "outcomes", "dead", "overview", "job_info", "progress")
_RECEIPTED = ("claim", "heartbeat", "finish", "cancel", "requeue", "purge", "pause", "resume")

SOURCES: dict[str, str] = {name: _source(name) for name in _PLAIN}
SOURCES["expired"] = _RETENTION + _source("expired")
SOURCES.update({name: _with_receipt(_source(name)) for name in _RECEIPTED})
_FINISH = _RETENTION + _MINUTE + _ANNOUNCE + _GROUP
SOURCES["finish"] = _with_receipt(_FINISH + _source("finish"))
SOURCES["finish_claim"] = _with_receipt(_FINISH + _compose("finish", "claim"))
SOURCES["cancel"] = _with_receipt(_ANNOUNCE + _GROUP + _source("cancel"))
SOURCES["tick"] = _function("submit") + _source("tick")
