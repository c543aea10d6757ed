"""The worker supervisor: one event loop does all Redis work while children run the tasks.

One anyio task group runs: the fetch loop (claims only as many jobs as children are free, blocks
on the queue's wake-up list between claims), one task per running job, the finisher (records
outcomes in batches, keeps them through Redis outages), heartbeats (extends leases, abandons
jobs whose lease was lost) and maintenance (recovers jobs whose lease expired).
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from .. import wire
from .._redis import is_transient
from .._redis import to_str as _str
from ..queue import Queue
from ..scripts import Scripts
from .pool import Pool, Work
from .settings import WorkerSettings

__all__ = ("Worker", "WorkerSettings")

log = logging.getLogger("aioqueue.worker")

BLOCK_RESOLUTION = 0.1  # seconds: how late Redis may end a blocking wait (1 / its default hz)


@dataclass(eq=False)
class _Held:
    """A job this worker holds a lease on."""

    id: str
    token: str
    attempts: int
    data: bytes
    env: wire.Envelope | None = None
    work: Work | None = None  # in the pool, until the child's reply
    lost: bool = False  # the lease was lost: drop whatever comes of it
    release: bool = False  # shutting down: hand it back without counting the attempt
    finishing: bool = False  # its outcome is queued for the finish script


@dataclass(eq=False)
class _Finish:
    held: _Held
    kind: str  # ok, retry, dead, release
    result: bytes = b""
    error: bytes = b""
    delay_ms: int = 0
    reaping: bool = False


class _Backoff:
    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.delay = base

    async def sleep(self) -> None:
        await anyio.sleep(self.delay * (0.5 + random.random() / 2))
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = self.base


class Worker:
    """A supervisor for the queue at ``spec`` (``module:attr``), with its pool of children."""

    def __init__(self, queue: Queue, spec: str, settings: WorkerSettings | None = None) -> None:
        self.queue = queue
        self.spec = spec
        self.settings = s = settings or WorkerSettings()
        s.validate()
        self.id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.keys = queue.keys
        self.redis = queue._make_client(socket_timeout=s.block_timeout + 5.0, retries=1)
        self.scripts = Scripts(self.redis)
        self.pool: Pool | None = None
        self.held: dict[str, _Held] = {}  # every job we hold a lease on, until its finish lands
        self.running = 0  # jobs between claim and the child's reply
        self.counters: dict[str, int] = {
            "claimed": 0, "completed": 0, "retried": 0, "dead": 0, "released": 0,
            "fenced": 0, "lost": 0, "recovered": 0, "stale": 0,
        }  # fmt: skip
        self._seq = 0
        self._slot_freed = anyio.Event()
        self._idle = anyio.Event()
        self._finish_queue: list[_Finish] = []
        self._finish_taken = 0  # outcomes being written right now
        self._finish_ready = anyio.Event()
        self._finish_changed = anyio.Event()  # set (and replaced) after each write attempt
        self.stopping = anyio.Event()
        self._hard_stop = anyio.Event()
        self._fetch_scope: anyio.CancelScope | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until the queue is drained (burst) or a signal arrives; then drain and return."""
        s = self.settings
        async with anyio.create_task_group() as tg:
            self.pool = Pool(
                self.spec,
                s.processes,
                spawn=tg.start_soon,
                depth=1 + math.ceil(s.prefetch / s.processes),
                max_tasks_per_child=s.max_tasks_per_child,
                kill_grace=s.kill_grace,
            )
            if s.handle_signals:
                tg.start_soon(self._signals)
            await self.pool.start()
            await self._check_redis()
            tg.start_soon(self._heartbeat_loop)
            tg.start_soon(self._maintenance_loop)
            tg.start_soon(self._finisher)
            log.info(
                "worker %s: queue %r, %d processes, pid %d",
                self.id, self.queue.name, s.processes, os.getpid(),
            )  # fmt: skip
            with anyio.CancelScope() as self._fetch_scope:
                await self._fetch_loop()
            await self._drain()
            tg.cancel_scope.cancel()
        await self.redis.aclose()
        log.info("worker %s stopped: %s", self.id, self.counters)

    def stop(self) -> None:
        """Stop taking jobs; running ones get the grace period (as on SIGTERM)."""
        self.stopping.set()
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()

    def stop_now(self) -> None:
        """Hand every running job back at once (as on a second signal)."""
        self.stop()
        self._hard_stop.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self.stopping.is_set():
                    log.info(
                        "%s: no new jobs; waiting up to %.0fs for %d running",
                        signal.Signals(signum).name, self.settings.grace, self.running,
                    )  # fmt: skip
                    self.stop()
                else:
                    log.info("%s again: handing running jobs back now", signal.Signals(signum).name)
                    self.stop_now()

    async def _drain(self) -> None:
        with anyio.move_on_after(self.settings.grace):
            async with anyio.create_task_group() as tg:

                async def hard() -> None:
                    await self._hard_stop.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(hard)
                await self._wait_idle()
                tg.cancel_scope.cancel()
        assert self.pool is not None
        for h in list(self.held.values()):
            if h.work is not None and not h.work.finished:
                h.release = True
                self.pool.cancel(h.work)
        await self._wait_idle()
        with anyio.move_on_after(max(5.0, self.settings.lease)):
            await self._flush_finishes()
        if self._finish_queue:
            log.warning("%d outcomes could not be written before exit", len(self._finish_queue))
        with anyio.CancelScope(shield=True):
            await self.pool.close(kill=True)
        try:
            with anyio.move_on_after(2.0):
                await self.redis.zrem(self.keys.workers, self.id)
        except Exception:  # best effort on the way out
            pass

    async def _wait_idle(self) -> None:
        while self.running:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def _check_redis(self) -> None:
        try:
            policy = await self.redis.config_get("maxmemory-policy")
        except Exception:  # CONFIG may be denied by ACL; then we can't tell
            return
        items: dict[Any, Any] = dict(policy)
        value = {_str(k): _str(v) for k, v in items.items()}.get("maxmemory-policy")
        if value != "noeviction":
            log.warning(
                "Redis maxmemory-policy is %r: Redis may evict queue keys and lose jobs; "
                "set it to noeviction",
                value,
            )

    # -- fetch -----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        s = self.settings
        backoff = _Backoff(cap=1.0)  # resume within about a second of Redis coming back
        while not self.stopping.is_set():
            free = s.processes + s.prefetch - self.running
            # with prefetch, refill in batches: claim again once half the prefetch is used up
            if free <= 0 or self.running > s.processes + s.prefetch // 2:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
                continue
            try:
                claimed, next_due_ms = await self._claim(free)
                backoff.reset()
                if claimed:
                    for held in claimed:
                        self._start(held)
                    continue
                if s.burst and not self.running and await self._queue_empty():
                    log.info("burst: queue empty, stopping")
                    self.stopping.set()
                    return
                timeout = s.block_timeout
                if next_due_ms >= 0:
                    # Redis ends blocking waits on its own 100 ms clock (hz 10), so the last
                    # stretch before a delayed job is due is waited out here, to the millisecond.
                    due = next_due_ms / 1000
                    if due <= BLOCK_RESOLUTION:
                        await anyio.sleep(due)
                        continue
                    timeout = min(timeout, due - BLOCK_RESOLUTION)
                await self.redis.blpop([self.keys.wake], timeout=max(timeout, 0.01))
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("fetch failed; retrying")
                else:
                    log.warning("fetch: Redis unavailable (%s); reconnecting", exc)
                await backoff.sleep()

    async def _claim(self, k: int) -> tuple[list[_Held], int]:
        """Claim up to ``k`` jobs; outcomes waiting to be written go in the same round trip."""
        k_ = self.keys
        seq = self._seq
        self._seq += k
        claim_keys = [k_.pending, k_.scheduled, k_.priority, k_.jobs, k_.attempts, k_.tokens,
                      k_.leases, k_.wake, k_.stats]  # fmt: skip
        claim_args = [k, int(self.settings.lease * 1000), f"{self.id}:", seq]
        fins = self._take_finishes()
        if not fins:
            reply = await self.scripts.call("claim", claim_keys, claim_args)
        else:
            try:
                finished, reply = await self.scripts.call_pair(
                    "finish_claim", self._finish_call(fins), (claim_keys, claim_args)
                )
            except BaseException:
                self._finish_queue[:0] = fins
                raise
            finally:
                self._finish_taken -= len(fins)
                self._notify_finish()
            for fin, r in zip(fins, finished, strict=True):
                self._finished(fin, int(r))
        next_due, stale = int(reply[0]), int(reply[1])
        if stale:
            self.counters["stale"] += stale
            log.warning("skipped %d stale queue entries (job finished or held elsewhere)", stale)
        claimed = _held_rows(reply[2:])
        for held in claimed:
            self.held[held.id] = held
        self.running += len(claimed)
        self.counters["claimed"] += len(claimed)
        return claimed, next_due

    async def _queue_empty(self) -> bool:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.pending)
            pipe.zcard(self.keys.scheduled)
            pipe.zcard(self.keys.leases)
            counts = await pipe.execute()
        return sum(int(c) for c in counts) == 0

    # -- run -------------------------------------------------------------------------------

    def _start(self, held: _Held) -> None:
        """Hand a claimed job to the pool, or finish it at once if it can't run."""
        fin, timeout = self._precheck(held)
        if fin is not None:
            self._job_done(held, fin)
            return
        assert self.pool is not None
        held.work = self.pool.submit(held.data, timeout, lambda reply: self._on_reply(held, reply))

    def _precheck(self, held: _Held) -> tuple[_Finish | None, float | None]:
        q = self.queue
        if len(held.data) > q.max_payload:
            size = f"job payload is {len(held.data):,} bytes, over max_payload {q.max_payload:,}"
            return self._dead(held, "PayloadTooLarge", size, "malformed"), None
        try:
            env = held.env = wire.decode_envelope(held.data)
        except Exception as exc:
            msg = f"job data can't be decoded: {exc}"
            return self._dead(held, "MalformedJob", msg, "malformed"), None
        td = q.tasks.get(env.task)
        if td is None:
            msg = f"no task named {env.task!r} in queue {q.name!r} (worker runs {self.spec})"
            return self._dead(held, "UnknownTask", msg, "unknown_task"), None
        return None, env.timeout if env.timeout is not None else td.timeout

    def _on_reply(self, held: _Held, reply: wire.ChildReply | None) -> None:
        """The pool is done with a job: a reply, or None when it was cancelled."""
        if reply is None:
            if held.lost:
                self.counters["lost"] += 1
                log.warning("job %s: lease lost; its outcome is dropped", held.id)
                self._job_done(held, None)
            else:
                self._job_done(held, _Finish(held, "release"))
            return
        self._job_done(held, self._outcome(held, reply))

    def _job_done(self, held: _Held, fin: _Finish | None) -> None:
        self.running -= 1
        self._slot_freed.set()
        if not self.running:
            self._idle.set()
        if fin is None:
            self.held.pop(held.id, None)
        else:
            self._enqueue_finish(fin)

    def _outcome(self, held: _Held, reply: wire.ChildReply) -> _Finish:
        env = held.env
        assert env is not None
        if reply.ok:
            outcome = wire.Outcome(
                v=wire.WIRE_VERSION, task=env.task, ok=True, value=reply.value,
                attempts=held.attempts, finished=time.time(),
            )  # fmt: skip
            return _Finish(held, "ok", result=wire.encode(outcome))
        err = reply.error or wire.ErrorInfo(type="Error", message="unknown failure")
        if err.kind in ("malformed", "unknown_task"):
            return self._dead(held, err.type, err.message, err.kind, err.traceback)
        return self._failed(held, env.task, err, self._retries(env))

    def _retries(self, env: wire.Envelope) -> int:
        """Attempts after the first: the job's own setting, else its task's (0 if unknown)."""
        if env.retries is not None:
            return env.retries
        td = self.queue.tasks.get(env.task)
        return td.retries if td is not None else 0

    def _failed(
        self, held: _Held, task: str, err: wire.ErrorInfo, retries: int, *, reaping: bool = False
    ) -> _Finish:
        err = msgspec.structs.replace(err, attempt=held.attempts)
        if held.attempts <= retries:
            s = self.settings
            delay = 0.0
            if not reaping:
                delay = min(s.retry_backoff * 2 ** (held.attempts - 1), s.retry_backoff_max)
                delay *= 0.5 + random.random() / 2
            log.info(
                "job %s: %s attempt %d failed (%s: %s); retry in %.2fs",
                held.id, task, held.attempts, err.type, err.message, delay,
            )  # fmt: skip
            return _Finish(
                held, "retry", error=wire.encode(err), delay_ms=math.ceil(delay * 1000),
                reaping=reaping,
            )  # fmt: skip
        log.warning(
            "job %s: %s failed after %d attempts (%s: %s); dead-lettered",
            held.id, task, held.attempts, err.type, err.message,
        )  # fmt: skip
        outcome = wire.Outcome(
            v=wire.WIRE_VERSION, task=task, ok=False, error=err, attempts=held.attempts,
            finished=time.time(),
        )  # fmt: skip
        return _Finish(
            held, "dead", result=wire.encode(outcome), error=wire.encode(err), reaping=reaping
        )

    def _dead(self, held: _Held, type_: str, message: str, kind: str, tb: str = "") -> _Finish:
        task = held.env.task if held.env is not None else "?"
        err = wire.ErrorInfo(type=type_, message=message, traceback=tb, attempt=held.attempts,
                             kind=kind)  # fmt: skip
        return self._failed(held, task, err, retries=0)

    # -- finish ----------------------------------------------------------------------------

    def _enqueue_finish(self, fin: _Finish) -> None:
        fin.held.finishing = True
        self._finish_queue.append(fin)
        self._finish_ready.set()

    async def _finisher(self) -> None:
        backoff = _Backoff(cap=1.0)
        while True:
            if not self._finish_queue:
                self._finish_ready = anyio.Event()
                await self._finish_ready.wait()
                continue
            await anyio.lowlevel.checkpoint()  # let the fetch loop take them with its claim
            batch = self._take_finishes()
            if not batch:
                continue
            try:
                replies = await self._finish(batch)
            except Exception as exc:
                self._finish_queue[:0] = batch
                log.warning("could not record %d outcomes (%s); will retry", len(batch), exc)
                await backoff.sleep()
                continue
            finally:
                self._finish_taken -= len(batch)
                self._notify_finish()
            backoff.reset()
            for fin, r in zip(batch, replies, strict=True):
                self._finished(fin, int(r))

    async def _flush_finishes(self) -> None:
        while self._finish_queue or self._finish_taken:
            changed = self._finish_changed
            self._finish_ready.set()
            await changed.wait()

    def _notify_finish(self) -> None:
        changed, self._finish_changed = self._finish_changed, anyio.Event()
        changed.set()

    def _take_finishes(self, n: int = 200) -> list[_Finish]:
        """Take ownership of up to ``n`` outcomes to write (put back on failure)."""
        batch = self._finish_queue[:n]
        del self._finish_queue[:n]
        self._finish_taken += len(batch)
        return batch

    async def _finish(self, batch: list[_Finish]) -> list[Any]:
        return list(await self.scripts.call("finish", *self._finish_call(batch)))

    def _finish_call(self, batch: list[_Finish]) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.jobs, k.attempts, k.tokens, k.leases, k.priority, k.pending, k.scheduled,
                k.dead, k.errors, k.wake, k.stats]  # fmt: skip
        args: list[Any] = [k.done_channel]
        default_ttl = self.queue.result_ttl
        for fin in batch:
            env = fin.held.env
            dedup = env.key if env is not None else None
            ttl = env.result_ttl if env is not None and env.result_ttl else default_ttl
            keys += [k.result(fin.held.id), k.dedup(dedup) if dedup else k.jobs]
            args += [
                fin.held.id, fin.held.token, fin.kind, fin.result, fin.error, fin.delay_ms,
                int(ttl * 1000), "1" if dedup else "0", "1" if fin.reaping else "0",
            ]  # fmt: skip
        return keys, args

    def _finished(self, fin: _Finish, applied: int) -> None:
        held = fin.held
        if not fin.reaping and self.held.get(held.id) is held:
            del self.held[held.id]
        if applied == 1:
            counter = {"ok": "completed", "retry": "retried", "dead": "dead", "release": "released"}
            self.counters["recovered" if fin.reaping else counter[fin.kind]] += 1
        elif applied == 0 and not fin.reaping:
            self.counters["fenced"] += 1
            log.warning("job %s: outcome rejected, the lease was lost (fenced)", held.id)

    # -- leases ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        k = self.keys
        first = True
        while True:
            if not first:  # the first beat registers the worker at once
                await anyio.sleep(self.settings.heartbeat)
            first = False
            pairs: list[Any] = []
            for h in self.held.values():
                pairs += [h.id, h.token]
            try:
                lost = await self.scripts.call(
                    "heartbeat",
                    [k.leases, k.tokens, k.workers],
                    [self.id, int(self.settings.lease * 1000), *pairs],
                )
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for job_id in lost:
                found = self.held.get(_str(job_id))
                if found is None:
                    continue
                held = found
                if held.finishing:
                    continue  # its outcome is on its way; the finish script fences it if need be
                held.lost = True
                log.warning("job %s: lease lost (presumed dead or cut off); abandoning", held.id)
                if held.work is not None and self.pool is not None:
                    self.pool.cancel(held.work)

    async def _maintenance_loop(self) -> None:
        k = self.keys
        while True:
            await anyio.sleep(self.settings.maintenance_interval * (0.75 + random.random() / 2))
            try:
                reply = await self.scripts.call(
                    "expired", [k.leases, k.tokens, k.attempts, k.jobs], [100]
                )
                if reply:
                    await self._recover(reply)
            except Exception as exc:
                log.warning("maintenance failed: %s", exc)

    async def _recover(self, reply: list[Any]) -> None:
        batch = []
        for held in _held_rows(reply):
            task, retries = "?", 0
            try:
                held.env = wire.decode_envelope(held.data)
                task, retries = held.env.task, self._retries(held.env)
            except msgspec.DecodeError:
                pass
            err = wire.ErrorInfo(
                type="WorkerLost",
                message="the lease expired: the worker running the job stopped heartbeating "
                "(killed, crashed, paused or cut off from Redis)",
                kind="lost",
            )
            batch.append(self._failed(held, task, err, retries, reaping=True))
        replies = await self._finish(batch)
        for fin, r in zip(batch, replies, strict=True):
            self._finished(fin, int(r))
        n = sum(1 for r in replies if int(r) == 1)
        if n:
            log.warning("recovered %d jobs whose lease expired", n)


def _held_rows(rows: list[Any]) -> list[_Held]:
    """Jobs from a script's flat reply of (id, token, attempts, envelope) rows."""
    return [
        _Held(id=_str(rows[i]), token=_str(rows[i + 1]), attempts=int(rows[i + 2]),
              data=bytes(rows[i + 3]))
        for i in range(0, len(rows), 4)
    ]  # fmt: skip
