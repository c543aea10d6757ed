"""``aioqueue doctor``: the Redis pointed at, checked against what the guarantees need."""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from redis import exceptions as rex
from redis.asyncio import Redis

from .._redis import call_redis, to_str
from ..errors import RedisRefused
from ..keys import Keys
from .decode import age, id_time
from .render import Output, Table
from .session import Session

__all__ = ("Finding", "doctor")

Level = Literal["ok", "risk", "note", "unknown"]
MIN_VERSION = (6, 2)
PINGS = 20
SLOW_PING_MS = 20.0
HEADROOM = 0.8  # used_memory above this share of maxmemory is a risk
STUCK_LEASE_S = 10.0  # a lease this far past due has nobody recovering it


@dataclass(frozen=True)
class Finding:
    """One check: ``risk`` findings make the exit code 1; ``fix`` says what to change."""

    check: str
    level: Level
    detail: str
    fix: str = ""


async def _config(r: Redis, name: str) -> str | None:
    """A CONFIG GET value, or None where CONFIG is refused (managed Redis, ACL)."""
    try:
        got = await r.config_get(name)
    except rex.ResponseError:
        return None
    value = got.get(name)
    return None if value is None else to_str(value)


def _server(info: dict[str, Any]) -> list[Finding]:
    out = []
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_VERSION:
        out.append(Finding("version", "risk", f"Redis {version}", "upgrade to Redis 6.2 or newer"))
    else:
        out.append(Finding("version", "ok", f"Redis {version}"))
    if int(info.get("cluster_enabled", 0)):
        out.append(
            Finding(
                "cluster",
                "note",
                "cluster mode: each queue lives on one slot "
                "(its keys share a hash tag); the registry key is on its own slot",
            )
        )
    else:
        out.append(Finding("cluster", "ok", "standalone"))
    return out


async def _persistence(r: Redis, info: dict[str, Any]) -> list[Finding]:
    aof = int(info.get("aof_enabled", 0))
    if not aof:
        return [
            Finding(
                "persistence",
                "risk",
                "appendonly no: a restart of Redis loses every "
                "write since the last snapshot, acknowledged submits included",
                "CONFIG SET appendonly yes (and in redis.conf: appendonly yes)",
            )
        ]
    fsync = await _config(r, "appendfsync")
    if fsync is None:
        return [
            Finding(
                "persistence", "unknown", "appendonly yes; appendfsync: can't tell (CONFIG refused)"
            )
        ]
    if fsync == "no":
        return [
            Finding(
                "persistence",
                "risk",
                "appendonly yes, appendfsync no: an OS crash loses what the OS had not flushed",
                "appendfsync everysec (or always)",
            )
        ]
    return [Finding("persistence", "ok", f"appendonly yes, appendfsync {fsync}")]


def _memory(info: dict[str, Any]) -> list[Finding]:
    policy = str(info.get("maxmemory_policy", "?"))
    out = []
    if policy != "noeviction":
        out.append(
            Finding(
                "maxmemory-policy",
                "risk",
                f"{policy}: Redis may evict a queue's keys (jobs, leases) at maxmemory",
                "maxmemory-policy noeviction",
            )
        )
    else:
        out.append(Finding("maxmemory-policy", "ok", "noeviction"))
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    mib = f"{used / 2**20:,.1f} MiB used"
    if not limit:
        out.append(
            Finding(
                "memory",
                "note",
                f"{mib}, no maxmemory: Redis grows until the OS kills it",
                "maxmemory below the host's memory, with headroom",
            )
        )
    elif used > HEADROOM * limit:
        out.append(
            Finding(
                "memory",
                "risk",
                f"{mib} of {limit / 2**20:,.1f} MiB "
                f"({used / limit:.0%}): submits fail at maxmemory",
                "raise maxmemory, or drain or purge queues",
            )
        )
    else:
        out.append(
            Finding("memory", "ok", f"{mib} of {limit / 2**20:,.1f} MiB ({used / limit:.0%})")
        )
    return out


async def _replication(r: Redis, info: dict[str, Any]) -> list[Finding]:
    role, replicas = info.get("role", "?"), int(info.get("connected_slaves", 0))
    if role != "master":
        return [
            Finding(
                "replication",
                "risk",
                f"this Redis is a {role}: writes go to its primary",
                "point --redis-url at the primary",
            )
        ]
    if not replicas:
        return [
            Finding(
                "replication",
                "note",
                "no replica: losing this host loses the queue (AOF keeps it across restarts)",
                "add a replica for failover",
            )
        ]
    least = await _config(r, "min-replicas-to-write")
    if least is None:
        return [
            Finding(
                "replication",
                "unknown",
                f"{replicas} replica(s); min-replicas-to-write: can't tell (CONFIG refused)",
            )
        ]
    if least == "0":
        return [
            Finding(
                "replication",
                "risk",
                f"{replicas} replica(s), min-replicas-to-write 0: "
                "a failover can lose acknowledged writes",
                "min-replicas-to-write 1 (and min-replicas-max-lag 10)",
            )
        ]
    return [Finding("replication", "ok", f"{replicas} replica(s), min-replicas-to-write {least}")]


async def _rights(r: Redis, keys: Keys) -> Finding:
    """Try the commands the queue needs on a scratch key under the queue's prefix."""
    scratch = keys.prefix + f"doctor:{os.urandom(4).hex()}"
    probe = (
        "redis.call('SET', KEYS[1], '1', 'PX', 5000) "
        "redis.call('PUBLISH', ARGV[1], '') "
        "return redis.call('DEL', KEYS[1])"
    )
    sha = hashlib.sha1(probe.encode()).hexdigest()
    tries: list[tuple[str, Any]] = [  # as the queue's producers and workers send them
        ("SCRIPT LOAD", lambda: r.script_load(probe)),
        ("EVALSHA (a script writing the queue's keys, publishing on its channel)",
         lambda: r.evalsha(sha, 1, scratch, keys.done_channel)),
        ("HMGET", lambda: r.hmget(scratch, ["x"])),
        ("MGET", lambda: r.mget([scratch])),
        ("ZREM", lambda: r.zrem(scratch, "x")),
        ("BLPOP", lambda: r.blpop([scratch], timeout=0.01)),
    ]  # fmt: skip
    denied = []
    for name, call in tries:
        try:
            await call()
        except rex.NoPermissionError:
            denied.append(name)
        except rex.ResponseError as exc:
            if "NOPERM" in str(exc):
                denied.append(name)
    pubsub = r.pubsub()
    try:
        await pubsub.subscribe(keys.done_channel)
        await pubsub.get_message(timeout=0.5)
    except rex.ResponseError:
        denied.append("SUBSCRIBE")
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
    if denied:
        return Finding(
            "acl",
            "risk",
            f"refused: {', '.join(denied)} on {keys.prefix}* and {keys.done_channel}",
            "grant the queue's user these commands on its keys and channel (README: TLS and ACL "
            "users gives the whole rule)",
        )
    return Finding(
        "acl", "ok", f"every command the queue needs runs on {keys.prefix}* and its channel"
    )


async def _latency(r: Redis) -> Finding:
    times = []
    for _ in range(PINGS):
        t = time.perf_counter()
        await r.ping()
        times.append((time.perf_counter() - t) * 1000)
    median = statistics.median(times)
    detail = f"median of {PINGS} PINGs {median:.2f} ms, max {max(times):.2f} ms"
    if median > SLOW_PING_MS:
        return Finding("latency", "risk", detail, "run workers near Redis, or raise --lease")
    return Finding("latency", "ok", detail)


async def _queue(session: Session, name: str) -> list[Finding]:
    q = session.queue(name)
    o = await q.scripts.overview()
    live = [w for w, d in o.workers.items() if d >= o.now_ms]
    gone = [w for w, d in o.workers.items() if d < o.now_ms]
    out = []
    if o.leases_past_due and o.earliest_lease_ms is not None:
        late = (o.now_ms - o.earliest_lease_ms) / 1000
        level: Level = "risk" if late > STUCK_LEASE_S else "note"
        out.append(
            Finding(
                "leases",
                level,
                f"{o.leases_past_due} lease(s) past due, the oldest by {age(late)}",
                "start a worker: live workers recover them",
            )
        )
    else:
        out.append(Finding("leases", "ok", f"{o.running} running, none past due"))
    oldest = min(o.level_heads, default=None)
    created = id_time(oldest) if oldest else None
    waiting = f"{o.pending:,} pending"
    if created is not None:
        waiting += f", the oldest submitted {age(o.now_ms / 1000 - created)} ago"
    if (o.pending or o.running) and not live:
        out.append(Finding("workers", "risk", f"{waiting}, no live worker", "start a worker"))
    else:
        out.append(Finding("backlog", "ok", f"{waiting}; {len(live)} live worker(s)"))
    if o.paused:
        detail = "paused: workers claim nothing"
        if o.pending:
            detail = f"paused while {o.pending:,} job(s) are pending: workers claim none of them"
        out.append(Finding("paused", "note", detail, f"aioqueue resume {name}"))
    if gone:
        out.append(
            Finding(
                "heartbeats",
                "risk",
                f"{len(gone)} worker(s) stopped heartbeating: {', '.join(gone)}",
                "their jobs are recovered by live workers; look for killed or cut-off hosts",
            )
        )
    if o.dead:
        out.append(
            Finding(
                "dead letters",
                "note",
                f"{o.dead:,} dead letter(s)",
                f"aioqueue dlq list --queue {name}",
            )
        )
    return out


async def doctor(session: Session, out: Output, queue: str | None) -> int:
    """Run every check; exit code 1 when any finds a risk."""
    r = session.redis
    findings: list[Finding] = []
    try:
        info: dict[str, Any] | None = await call_redis(r.info(), session.url)
    except RedisRefused as exc:  # a user confined to its queues: check what it can
        info = None
        findings.append(Finding(
            "server", "unknown",
            f"INFO refused, so version, persistence, memory and replication are not checked: "
            f"{exc}", "run doctor as a user allowed INFO and CONFIG GET for those",
        ))  # fmt: skip
    if info is not None:
        findings += _server(info)
        findings += await _persistence(r, info)
        findings += _memory(info)
        findings += await _replication(r, info)
    if queue is None:
        findings.append(Finding("acl", "note", "no queue named: its user's rights not checked",
                                "aioqueue doctor QUEUE"))  # fmt: skip
    try:
        if queue is not None:
            findings.append(await call_redis(_rights(r, Keys(queue)), session.url))
    except RedisRefused as exc:
        findings.append(Finding("acl", "unknown", f"can't tell: {exc}"))
    findings.append(await call_redis(_latency(r), session.url))
    if queue:
        findings += await _queue(session, queue)
    risks = sum(f.level == "risk" for f in findings)
    data = {"redis": session.safe_url, "queue": queue, "risks": risks,
            "findings": [asdict(f) for f in findings]}  # fmt: skip
    rows = [[f.level, f.check, f.detail, f.fix] for f in findings]
    out.emit(data, [Table(f"doctor: {session.safe_url} ({risks} risk(s))",
                          ["level", "check", "finding", "change"], rows)])  # fmt: skip
    return 1 if risks else 0
