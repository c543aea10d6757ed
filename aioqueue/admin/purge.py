"""``aioqueue purge QUEUE``: delete every key of a queue, by name, in batches (no SCAN, no KEYS)."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from .. import wire
from .._redis import call_redis, to_str
from ..keys import REGISTRY
from ..queue import Queue
from .render import Note, Output
from .session import CommandError, Session

__all__ = ("purge",)

BATCH = 1000
_WORKER_RECEIPTS = ("fetch", "beat", "reap", "finish")  # the worker's receipt channels


async def _per_job_keys(q: Queue) -> int:
    """Delete the result, de-duplication key and list of dependents of every job in the jobs
    hash (HSCAN, in batches of :data:`BATCH`); how many keys went."""
    k, r, deleted = q.keys, q.redis, 0
    cursor = 0
    while True:
        cursor, batch = await call_redis(r.hscan(k.jobs, cursor, count=BATCH), q.redis_url)
        names: list[str] = []
        for job_id, data in batch.items():
            names += [k.result(to_str(job_id)), k.after(to_str(job_id))]
            with contextlib.suppress(msgspec.DecodeError):
                env = wire.decode_envelope(data)
                if env.key is not None:
                    names.append(k.dedup(env.key))
                if env.group is not None:
                    names.append(k.gq(env.group))
        if names:
            deleted += await call_redis(r.unlink(*names), q.redis_url)
        if cursor == 0:
            return deleted


async def _ids_of(q: Queue, key: str) -> list[str]:
    return [to_str(i) for i in await call_redis(q.redis.zrange(key, 0, -1), q.redis_url)]


async def purge(session: Session, out: Output, name: str, yes: bool, force: bool) -> int:
    """Delete the queue's keys; refuse while live workers serve it, unless ``force``."""
    q = session.queue(name)
    o = await q.scripts.overview()
    live = [w for w, deadline in o.workers.items() if deadline >= o.now_ms]
    if live and not force:
        raise CommandError(
            f"queue {name!r} has {len(live)} live worker(s) ({', '.join(live)}): stop them "
            f"first, or pass --force"
        )
    jobs = await call_redis(q.redis.hlen(q.keys.jobs), q.redis_url)
    out.confirm(
        f"Purge queue {name!r}: {jobs:,} job(s) ({o.pending:,} pending, {o.scheduled:,} "
        f"scheduled, {o.running:,} running, {o.dead:,} dead) and every key of it?",
        yes,
    )
    k = q.keys
    deleted = await _per_job_keys(q)
    receipts = [k.receipt(f"{w}:{c}") for w in o.workers for c in _WORKER_RECEIPTS]
    receipts += [k.receipt("pause"), k.receipt("resume")]
    # dead letters and leases may outlive their entry in the jobs hash: their results too
    orphans = [k.result(i) for i in await _ids_of(q, k.dead) + await _ids_of(q, k.leases)]
    for i in range(0, len(receipts + orphans), BATCH):
        deleted += await call_redis(
            q.redis.unlink(*(receipts + orphans)[i : i + BATCH]), q.redis_url
        )
    fixed = [k.jobs, k.pending, k.scheduled, k.priority, k.attempts, k.tokens, k.leases,
             k.dead, k.errors, k.wake, k.workers, k.worker_info, k.stats, k.paused,
             k.schedules, k.cancels, k.full, k.blocked, k.gactive, k.glimit, k.rated,
             k.tat]  # fmt: skip
    deleted += await call_redis(q.redis.unlink(*fixed), q.redis_url)
    await call_redis(q.redis.srem(REGISTRY, name), q.redis_url)
    data: dict[str, Any] = {"queue": name, "jobs": jobs, "keys_deleted": deleted}
    out.emit(data, [Note(f"purged queue {name}: {jobs:,} job(s), {deleted:,} key(s) deleted")])
    return 0
