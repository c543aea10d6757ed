"""The Lua scripts: loaded once from ``lua/*.lua``, one typed method per script.

Every method builds its script's key list from :class:`~aioqueue.keys.Keys` and parses the reply
into a typed value, so no caller knows a script's KEYS or ARGV layout.

Scripts that change state and may be re-sent after a lost reply (redis-py retries a command whose
connection broke, and the worker re-sends an unanswered call) take a :class:`Receipt`: the first
run stores its reply under the receipt's key, and a re-send with the same call id gets that reply
back instead of running again. A claim re-sent that way returns the jobs it leased the first
time instead of popping others; a re-sent release, cancel or requeue reports what it did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from redis import exceptions as rex
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ._link import Link, Links, pack
from ._redis import as_error, call_redis, to_str
from ._sources import SOURCES
from .keys import Keys
from .script_values import (
    ClaimReply,
    DeadRow,
    FinishItem,
    InfoReply,
    LeasedJob,
    NewJob,
    Receipt,
)
from .views import JobRow, Overview, WorkerAbout, last_minute, schedule_rows

__all__ = (
    "ClaimReply",
    "DeadRow",
    "FinishItem",
    "InfoReply",
    "LeasedJob",
    "NewJob",
    "Receipt",
    "Scripts",
)

_extras = msgspec.msgpack.Encoder()  # a job's rarely used submit fields, in one argument


def _leased(rows: list[Any], *, claimed: bool) -> list[LeasedJob]:
    """Jobs in rows of five: id, token, attempts, envelope, then the last progress report
    ('' if none) for a claim, whether the holder still heartbeats for expired leases."""
    return [
        LeasedJob(
            id=to_str(rows[i]),
            token=to_str(rows[i + 1]),
            attempts=int(rows[i + 2]),
            data=bytes(rows[i + 3]),
            holder_alive=claimed or int(rows[i + 4]) == 1,
            progress=bytes(rows[i + 4]) if claimed and rows[i + 4] else None,
        )
        for i in range(0, len(rows), 5)
    ]


def _claim_reply(reply: list[Any]) -> ClaimReply:
    jobs = _leased(reply[3:], claimed=True)
    return ClaimReply(jobs, int(reply[0]), int(reply[1]), int(reply[2]) == 1)


class Scripts:
    """The scripts of one queue, bound to one client; each call is an ``EVALSHA`` that reloads
    itself after ``SCRIPT FLUSH``, and raises aioqueue's errors naming ``url``."""

    def __init__(self, redis: Redis, keys: Keys, url: str, *, links: bool = False) -> None:
        self.keys = keys
        self.url = url
        self.redis = redis
        self._links = Links.of(redis) if links else None
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(src) for name, src in SOURCES.items()
        }

    def sha(self, name: str) -> str:
        """The SHA1 of a script (for fault injection that targets one script)."""
        return str(self._scripts[name].sha)

    async def _run(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        receipt: Receipt | None = None,
        link: Link | None = None,
        before: bytes | None = None,
    ) -> Any:
        if receipt is not None:
            keys = [*keys, receipt.key]
            args = [*args, receipt.call, receipt.ttl_ms]
        if link is None:
            return await call_redis(self._scripts[name](keys=keys, args=args), self.url)
        return await call_redis(self._on_link(link, name, keys, args, before), self.url)

    async def _on_link(
        self, link: Link, name: str, keys: list[str], args: list[Any], before: bytes | None = None
    ) -> Any:
        """``EVALSHA`` on a held connection (``before`` it, that command: see
        :meth:`.Link.call`), loading the script if Redis lost it."""
        script = self._scripts[name]
        sha = script.sha if isinstance(script.sha, str) else bytes(script.sha)
        command = pack("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await link.call(command, before)
        except NoScriptError:
            src = script.script
            await link.call(pack("SCRIPT", "LOAD", src if isinstance(src, str) else bytes(src)))
            return await link.call(command)

    # -- producer --------------------------------------------------------------------------

    async def submit(self, jobs: Sequence[NewJob], bound: int = 0) -> list[tuple[str, int]]:
        """Add jobs; per job, the id holding the work and 1 if it is this job, 0 if a
        de-duplication key held by another job gave that one's id, -1 if the queue held
        ``bound`` waiting jobs already (0: no bound) and nothing was written for it."""
        k = self.keys
        keys = [k.jobs, k.pending, k.scheduled, k.priority, k.wake, k.full, k.blocked,
                k.gactive, k.glimit, k.rated]  # fmt: skip
        args: list[Any] = [bound]
        for j in jobs:
            keys += [k.result(j.id), k.dedup(j.key) if j.key is not None else k.jobs]
            extra = b""
            if j.group or j.rate or j.debounce or j.after:
                extra = _extras.encode(
                    [j.group or "", j.group_limit, j.rate, j.debounce, list(j.after)]
                )
                keys.append(k.gq(j.group) if j.group else k.jobs)
                for parent in j.after:
                    keys += [k.after(parent), k.result(parent)]
            args += [j.id, j.data, j.priority, j.delay_ms, "1" if j.key is not None else "0",
                     extra]  # fmt: skip
        # on a held connection; after a lost link (re-sent once there) through the client,
        # with its retries and backoff: a job's id makes a re-send safe
        reply = None
        links = self._links
        if links is not None:
            link = links.take()
            try:
                reply = await self._on_link(link, "submit", keys, args)
            except (rex.ConnectionError, rex.TimeoutError, OSError):
                pass  # the client's own retries and backoff take it from here
            except rex.RedisError as exc:
                raise as_error(exc, self.url) from exc
            finally:
                if not links.give(link):
                    await link.aclose()
        if reply is None:
            reply = await self._run("submit", keys, args)
        return [(to_str(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def tick(self, schedule: str, tick_ms: int, job: NewJob | None) -> bool:
        """Record a schedule's tick as fired and submit its ``job`` (None: record only), in
        one step; False if this tick or a later one was fired already."""
        k = self.keys
        keys, args = [k.schedules], [schedule, tick_ms]
        if job is not None:
            keys += [k.jobs, k.pending, k.scheduled, k.priority, k.wake, k.full, k.blocked,
                     k.gactive, k.glimit, k.rated, k.result(job.id), k.jobs]  # fmt: skip
            args += [job.id, job.data, job.priority, job.delay_ms, "0", ""]
        return bool(await self._run("tick", keys, args))

    async def cancel(
        self,
        jobs: Sequence[tuple[str, bytes, str | None] | tuple[str, bytes, str | None, str | None]],
        result_ttl_ms: int,
    ) -> list[int]:
        """Withdraw waiting jobs, given as (id, encoded cancelled Outcome, de-duplication key[,
        concurrency group]),
        and ask the holders of running ones to stop them; per job, 1 if it was cancelled, 2 if
        it runs and its holder was asked to stop it, 0 if it finished otherwise or is unknown."""
        keys, args = self.cancel_call(jobs, result_ttl_ms)
        reply = await self._run("cancel", keys, args, Receipt.once(self.keys))
        return [int(r) for r in reply]

    def cancel_call(
        self,
        jobs: Sequence[tuple[str, bytes, str | None] | tuple[str, bytes, str | None, str | None]],
        result_ttl_ms: int,
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of a cancel (see :meth:`cancel`)."""
        k = self.keys
        keys = [k.pending, k.scheduled, k.jobs, k.attempts, k.priority, k.errors, k.stats,
                k.leases, k.cancels, k.blocked, k.gactive, k.glimit, k.wake, k.rated,
                k.progress]  # fmt: skip
        args: list[Any] = [k.done_channel, result_ttl_ms]
        for job_id, outcome, dedup, *group in jobs:
            g = group[0] if group else None
            keys += [k.result(job_id), k.dedup(dedup) if dedup else k.jobs,
                     k.gq(g) if g else k.jobs]  # fmt: skip
            args += [job_id, outcome, "1" if dedup else "0", g or ""]
        return keys, args

    async def status(self, job_id: str) -> tuple[str, bytes | None]:
        """Where a job is (running, pending, scheduled, dead, finished, unknown), and its
        outcome bytes when finished."""
        k = self.keys
        keys = [k.leases, k.pending, k.scheduled, k.dead, k.result(job_id), k.jobs]
        state, outcome = await self._run("status", keys, [job_id])
        return to_str(state), bytes(outcome) if outcome else None

    async def outcomes(self, ids: Sequence[str]) -> list[bytes | bool]:
        """Per id: its outcome bytes, else True if the job exists unfinished, False if unknown."""
        keys = [self.keys.jobs, *(self.keys.result(i) for i in ids)]
        found = await self._run("outcomes", keys, list(ids))
        return [bytes(f) if isinstance(f, bytes) else bool(f) for f in found]

    async def info(self) -> InfoReply:
        """Counts, workers by heartbeat deadline, and counters, read in one step."""
        o = await self.overview(max_levels=0)
        live = [w for w, deadline in o.workers.items() if deadline >= o.now_ms]
        gone = [w for w, deadline in o.workers.items() if deadline < o.now_ms]
        return InfoReply(
            o.pending, o.scheduled, o.running, o.dead, live, gone, o.counters, o.paused,
            o.last_minute, o.waiting,
        )  # fmt: skip

    async def dead_letters(self, limit: int) -> list[DeadRow]:
        """The oldest ``limit`` dead letters, read in one step."""
        k = self.keys
        rows = await self._run("dead", [k.dead, k.jobs, k.errors], [limit])
        return [
            DeadRow(to_str(rows[i]), float(rows[i + 1]), rows[i + 2], rows[i + 3])
            for i in range(0, len(rows), 4)
        ]

    async def requeue(self, jobs: Sequence[tuple[str, str | None]]) -> list[bool]:
        """Move dead letters, given as (id, de-duplication key), back to pending; per job,
        True if it moved."""
        k = self.keys
        keys = [k.dead, k.attempts, k.errors, k.pending, k.priority, k.wake, k.jobs]
        args: list[Any] = []
        for job_id, dedup in jobs:
            keys += [k.result(job_id), k.dedup(dedup) if dedup else k.jobs]
            args += [job_id, "1" if dedup else "0"]
        reply = await self._run("requeue", keys, args, Receipt.once(k))
        return [bool(r) for r in reply]

    async def purge(self, ids: Sequence[str]) -> int:
        """Delete dead letters for good; how many were purged."""
        k = self.keys
        keys = [k.dead, k.jobs, k.attempts, k.errors, k.priority]
        return int(await self._run("purge", keys, list(ids), Receipt.once(k)))

    # -- worker ----------------------------------------------------------------------------

    def _finish_call(
        self, items: Sequence[FinishItem], dead_ttl_ms: int, max_dead: int
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.jobs, k.attempts, k.tokens, k.leases, k.priority, k.pending, k.scheduled,
                k.dead, k.errors, k.wake, k.stats, k.cancels, k.blocked, k.gactive,
                k.glimit, k.rated, k.progress]  # fmt: skip
        args: list[Any] = [k.done_channel, dead_ttl_ms, max_dead, len(items)]
        for f in items:
            keys += [k.result(f.id), k.dedup(f.dedup) if f.dedup else k.jobs, k.after(f.id),
                     k.gq(f.group) if f.group else k.jobs]  # fmt: skip
            args += [f.id, f.token, f.kind, f.result, f.error, f.delay_ms, f.ttl_ms,
                     "1" if f.dedup else "0", "1" if f.reaping else "0", f.group]  # fmt: skip
        return keys, args

    async def claim(
        self,
        k: int,
        lease_ms: int,
        holder: str,
        receipt: Receipt,
        finish: Sequence[FinishItem] = (),
        dead: tuple[int, int] = (0, 0),
        link: Link | None = None,
        before: bytes | None = None,
    ) -> tuple[list[int], ClaimReply]:
        """Promote due scheduled jobs and lease up to ``k`` ready ones to ``holder``; record
        ``finish`` outcomes first in the same round trip (``dead``: the retention, ms and
        count). Returns the finish replies (see :meth:`finish`) and what was claimed.
        ``link``: send it on that held connection, behind the command ``before`` if given.

        The leases' tokens are ``holder:N`` for N from ``receipt.call`` (a number) upwards, so
        the caller advances its call ids by at least ``k`` between claims.
        """
        ks = self.keys
        claim_keys = [ks.pending, ks.scheduled, ks.priority, ks.jobs, ks.attempts, ks.tokens,
                      ks.leases, ks.wake, ks.stats, ks.paused, ks.full, ks.rated,
                      ks.tat, ks.progress]  # fmt: skip
        claim_args: list[Any] = [k, lease_ms, f"{holder}:", receipt.call, ks.done_channel]
        if not finish:
            reply = await self._run("claim", claim_keys, claim_args, receipt, link, before)
            return [], _claim_reply(reply)
        fk, fa = self._finish_call(finish, *dead)
        args = [*fa, *claim_args]
        keys = fk + claim_keys
        finished, claimed = await self._run("finish_claim", keys, args, receipt, link, before)
        return [int(r) for r in finished], _claim_reply(claimed)

    async def finish(
        self,
        items: Sequence[FinishItem],
        receipt: Receipt,
        dead: tuple[int, int],
        link: Link | None = None,
    ) -> list[int]:
        """Record outcomes; per item 1 applied, 0 fenced, -1 lease still alive (reaping), -2
        nothing left to recover (reaping). ``link``: send it on that held connection."""
        keys, args = self._finish_call(items, *dead)
        return [int(r) for r in await self._run("finish", keys, args, receipt, link)]

    async def heartbeat(
        self,
        worker: str,
        lease_ms: int,
        held: Sequence[tuple[str, str]],
        receipt: Receipt,
        about: WorkerAbout | None = None,
    ) -> tuple[list[str], list[str]]:
        """Extend the leases of ``held`` (id, token) pairs and say what the worker is (``about``,
        for ``aioqueue info``); the ids no longer held, and the held ids asked to be cancelled."""
        k = self.keys
        about = about or WorkerAbout(0, len(held), 0)
        args: list[Any] = [worker, lease_ms, about.encode()]
        for pair in held:
            args += pair
        keys = [k.leases, k.tokens, k.workers, k.worker_info, k.cancels]
        lost, stop = await self._run("heartbeat", keys, args, receipt)
        return [to_str(i) for i in lost], [to_str(i) for i in stop]

    async def progress(self, reports: Sequence[tuple[str, str, bytes]]) -> int:
        """Record (id, token, encoded Progress) reports of jobs still held under those tokens,
        and publish each on its job's events channel; how many were recorded."""
        k = self.keys
        args: list[Any] = []
        for job_id, token, report in reports:
            args += [job_id, token, report, k.events(job_id)]
        return int(await self._run("progress", [k.tokens, k.progress], args))

    async def expired(self, limit: int, dead: tuple[int, int]) -> list[LeasedJob]:
        """Leases past their deadline (and dead-letter retention applied on the way)."""
        k = self.keys
        keys = [k.leases, k.tokens, k.attempts, k.jobs, k.workers, k.dead, k.errors, k.priority]
        return _leased(await self._run("expired", keys, [limit, *dead]), claimed=False)

    # -- administration (read-only) --------------------------------------------------------

    async def overview(self, max_levels: int = 64) -> Overview:
        """Counts, workers with their heartbeat deadlines, counters, the first pending job of
        each priority level (at most ``max_levels``), the leases past due and the pause flag,
        in one step."""
        k = self.keys
        keys = [k.pending, k.scheduled, k.leases, k.dead, k.workers, k.stats, k.paused,
                k.worker_info, k.schedules, k.blocked]  # fmt: skip
        reply = await self._run("overview", keys, [max_levels])
        now, p, s, r, d, workers, stats, heads, more, past, first, paused, about, sched, w = reply
        fields = {to_str(stats[i]): int(stats[i + 1]) for i in range(0, len(stats), 2)}
        return Overview(
            now_ms=int(now),
            pending=int(p),
            scheduled=int(s),
            running=int(r),
            dead=int(d),
            workers={to_str(workers[i]): float(workers[i + 1]) for i in range(0, len(workers), 2)},
            counters={f: v for f, v in fields.items() if ":" not in f},
            last_minute=last_minute(fields, int(now)),
            this_minute=last_minute(fields, int(now), ago=0),
            schedules=schedule_rows(sched),
            waiting=int(w),
            about={
                to_str(about[i]): WorkerAbout.decode(about[i + 1]) for i in range(0, len(about), 2)
            },
            level_heads=[to_str(h) for h in heads],
            more_levels=bool(more),
            leases_past_due=int(past),
            earliest_lease_ms=float(first) if first else None,
            paused=int(paused) == 1,
        )

    async def job_info(self, job_id: str) -> JobRow:
        """Everything stored about one job, read in one step."""
        k = self.keys
        keys = [k.jobs, k.attempts, k.tokens, k.leases, k.pending, k.scheduled, k.dead,
                k.errors, k.priority, k.result(job_id), k.progress]  # fmt: skip
        reply = await self._run("job_info", keys, [job_id])
        now, state, env, attempts, token, lease, run_at, dead_at, errors, outcome, report = reply
        return JobRow(
            now_ms=int(now),
            state=to_str(state),
            data=bytes(env) if env else None,
            attempts=int(attempts) if attempts else 0,
            token=to_str(token) if token else None,
            lease_ms=float(lease) if lease else None,
            run_at_ms=float(run_at) if run_at else None,
            dead_at_ms=float(dead_at) if dead_at else None,
            errors=bytes(errors) if errors else None,
            outcome=bytes(outcome) if outcome else None,
            progress=bytes(report) if report else None,
        )

    # -- pause -----------------------------------------------------------------------------

    async def pause(self) -> bool:
        """Set the queue's pause flag, which every claim reads: workers claim nothing until
        :meth:`resume`. True if the queue was not paused already (a re-send answers the same)."""
        return bool(
            await self._run("pause", [self.keys.paused], [], Receipt.once(self.keys, "pause"))
        )

    async def resume(self) -> bool:
        """Clear the pause flag and wake a worker blocked on the wake list, in one step; True if
        the queue was paused (a re-send answers the same, and pushes nothing more)."""
        k = self.keys
        return bool(await self._run("resume", [k.paused, k.wake], [], Receipt.once(k, "resume")))

    async def paused(self) -> bool:
        """Whether the queue is paused (one command)."""
        return bool(await call_redis(self.redis.exists(self.keys.paused), self.url))
