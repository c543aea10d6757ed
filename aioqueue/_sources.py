"""The Lua sources of the scripts: read from ``lua/*.lua`` and composed.

Shared helpers (``_retention``, ``_minute``, ``_announce``, ``_group``) are prepended to the
scripts that use them; :func:`_with_receipt` wraps a script so that a re-sent call gets its
first reply; :func:`_finish_claim` runs a finish and a claim in one round trip.
"""

from __future__ import annotations

from importlib import resources

__all__ = ("SOURCES",)


def _source(name: str) -> str:
    return (resources.files("aioqueue") / "lua" / f"{name}.lua").read_text()


def _function(name: str) -> str:
    return f"local function run_{name}(KEYS, ARGV, now)\n{_source(name)}\nend\n"


def _finish_claim() -> str:
    """One script that records outcomes and then claims: one round trip, no pipeline.

    The finish's KEYS and ARGV come first and it gets them as they are (it reads only its own:
    17 + 4n KEYS, 4 + 10n ARGV, n its ARGV[4]); the claim's follow, copied for it (they are
    few), with the finish's time, so that it asks for neither the time nor a first deletion
    again (see claim.lua). Returns ``{finish's reply, claim's reply}``. A body of
    :func:`_with_receipt`, given the count of KEYS and ARGV before the receipt's.
    """
    return f"""{_function("finish")}{_function("claim")}
local n = tonumber(ARGV[4])
local k, a = {{}}, {{}}
for i = 18 + 4 * n, nkeys do k[#k + 1] = KEYS[i] end
for i = 5 + 10 * n, nargs do a[#a + 1] = ARGV[i] end
local finished, now = run_finish(KEYS, ARGV)
return {{finished, run_claim(k, a, now)}}
"""


_COPIES = """local k, a = {}, {}
for i = 1, nkeys do k[i] = KEYS[i] end
for i = 1, nargs do a[i] = ARGV[i] end
"""


def _with_receipt(body: str, *, whole: bool = False) -> str:
    """Wrap a script so that a re-sent call gets its first reply.

    The last KEY is the receipt key, the last two ARGV the call id and the receipt's TTL (ms).
    The receipt holds ``call id | msgpack(reply)``; a call with the same id returns the stored
    reply and writes nothing. The body runs first, so its first write stays its own (a deletion,
    in the scripts that must work at ``maxmemory``).

    The body gets copies of KEYS and ARGV without the receipt's; with ``whole``, for a body that
    reads only the leading ones it knows, KEYS and ARGV as they are (no copies: the hot path's
    scripts take 30-60 of them), and, as ``nkeys`` and ``nargs``, how many come before the
    receipt's. Its last parameter, ``now``, is nil here (see claim.lua).
    """
    copies, run = (
        ("", "body(KEYS, ARGV, nkeys, nargs)") if whole else (_COPIES, "body(k, a, nkeys, nargs)")
    )
    return f"""local function body(KEYS, ARGV, nkeys, nargs, now)
{body}
end
local nkeys, nargs = #KEYS - 1, #ARGV - 2
local rkey, call, ttl = KEYS[nkeys + 1], ARGV[nargs + 1], ARGV[nargs + 2]
local prev = redis.call('GET', rkey)
if prev then
  local sep = string.find(prev, '|', 1, true)
  if sep and string.sub(prev, 1, sep - 1) == call then
    return cmsgpack.unpack(string.sub(prev, sep + 1))
  end
end
{copies}local out = {run}
redis.call('SET', rkey, call .. '|' .. cmsgpack.pack(out), 'PX', ttl)
return out
"""


_RETENTION = _source("_retention")
_MINUTE = _source("_minute")
_ANNOUNCE = _source("_announce")
_GROUP = _source("_group")
_PLAIN = ("submit", "status", "outcomes", "dead", "overview", "job_info", "progress")
_RECEIPTED = ("heartbeat", "cancel", "requeue", "purge", "pause", "resume")

SOURCES: dict[str, str] = {name: _source(name) for name in _PLAIN}
SOURCES["expired"] = _RETENTION + _source("expired")
SOURCES.update({name: _with_receipt(_source(name)) for name in _RECEIPTED})
_FINISH = _RETENTION + _MINUTE + _ANNOUNCE + _GROUP
SOURCES["claim"] = _with_receipt(_source("claim"), whole=True)
SOURCES["finish"] = _with_receipt(_FINISH + _source("finish"), whole=True)
SOURCES["finish_claim"] = _with_receipt(_FINISH + _finish_claim(), whole=True)
SOURCES["cancel"] = _with_receipt(_ANNOUNCE + _GROUP + _source("cancel"))
SOURCES["tick"] = _function("submit") + _source("tick")
