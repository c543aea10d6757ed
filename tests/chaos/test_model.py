"""A Hypothesis state machine that drives the Lua scripts directly against a private Redis.

Rules: submit (new or duplicate id, now or delayed), claim with a tiny (1 ms) or a long lease
(nothing while the queue is paused), pause and resume, heartbeat, finish ok/retry/dead/release with
the current or a stale token, a worker crash (its tokens are forgotten), requeue of the dead
letters, and reaping: a real 3 ms wait, then ``expired`` and ``finish`` with ``reaping``; and the
re-send of the last call exactly as a client re-sends it after a lost reply (same arguments, same
receipt), which must answer as the first time and change nothing. Delays are 0 or a minute, and
reaping waits past every tiny lease, so each step's outcome is independent of timing (Hypothesis can
replay it).
After every step each job must be in exactly one state, that state must be the model's,
attempts must match, and the counts must be conserved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aioqueue.scripts import FinishItem, NewJob, Receipt, Scripts
from aioqueue.testing import RedisServer

from .harness import KEYS

pytestmark = [pytest.mark.chaos]

K = KEYS
MAX_ATTEMPTS = 3
LONG = 60_000
DEAD = (3_600_000, 1_000_000)  # dead-letter retention far beyond the run
T = TypeVar("T")


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class QueueMachine(RuleBasedStateMachine):
    port = 0

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis(port=self.port)
        self.r.flushall()
        self.loop = asyncio.new_event_loop()
        self.client = redis.asyncio.Redis(port=self.port)
        self.sc = Scripts(self.client, K, f"redis://127.0.0.1:{self.port}")
        self.calls = 0
        self.last: tuple[Callable[[], Awaitable[Any]], Any, tuple[Any, ...]] | None = None
        self.state: dict[str, str] = {}  # id -> queued, leased, done, dead
        self.attempts: dict[str, int] = {}
        self.token: dict[str, str] = {}  # current lease holder token, per leased id
        self.short: set[str] = set()  # leased ids whose lease may have run out
        self.held: dict[str, str] = {}  # what the live worker believes it holds
        self.old: list[tuple[str, str]] = []  # every token ever handed out
        self.n = 0
        self.seq = 0
        self.fenced = 0
        self.paused = False

    def teardown(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
        self.r.close()

    # -- helpers -------------------------------------------------------------------------------

    def _receipt(self, channel: str, first: int | None = None) -> Receipt:
        """A receipt on one of the model worker's channels (each has its own key, as a real
        worker's fetch, finish and beat channels do)."""
        self.calls += 1
        call = self.calls if first is None else first
        return Receipt(K.receipt(f"model:{channel}"), str(call), LONG)

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one script call; remember it, and what it left, for :meth:`resend_last`."""
        reply = self.loop.run_until_complete(fn())
        self.last = (fn, reply, self._dump())
        return reply

    def _finish(self, id_: str, token: str, kind: str, delay: int, reaping: bool) -> int:
        # every call's outcome bytes are unique, as real ones are (they carry the attempt number,
        # the error and a timestamp); only a re-sent call repeats them
        r = self._receipt("finish")
        tag = f"{id_}/{token}/{kind}/{'reaper' if reaping else 'holder'}/{r.call}".encode()
        item = FinishItem(
            id_, token, kind, result=b"result " + tag, error=b"error " + tag,  # type: ignore[arg-type]
            delay_ms=delay, ttl_ms=LONG, reaping=reaping,
        )  # fmt: skip
        return self._call(lambda: self.sc.finish([item], r, DEAD))[0]

    def _apply(self, id_: str, kind: str) -> None:
        self.token.pop(id_, None)
        self.short.discard(id_)
        self.held.pop(id_, None)
        if kind == "ok":
            self.state[id_] = "done"
        elif kind == "dead":
            self.state[id_] = "dead"
        else:
            self.state[id_] = "queued"
            if kind == "release":
                self.attempts[id_] -= 1

    # -- rules ---------------------------------------------------------------------------------

    @rule(dup=st.booleans(), delay=st.sampled_from([0, 0, LONG]), pick=st.integers(0, 99))
    def submit(self, dup: bool, delay: int, pick: int) -> None:
        if dup and self.state:
            id_ = sorted(self.state)[pick % len(self.state)]
        else:
            id_ = f"j{self.n:04d}"
            self.n += 1
        job = NewJob(id_, b"env-" + id_.encode(), 0, delay)
        before = self._dump()
        [(held_by, created)] = self._call(lambda: self.sc.submit([job]))
        # an id of a job that exists (or finished) is this submit re-sent: it is told the job
        # is its own, and nothing is written
        assert held_by == id_ and created
        if id_ in self.state:
            assert self._dump() == before
        else:
            self.state[id_] = "queued"
            self.attempts[id_] = 0

    @rule(k=st.integers(1, 3), short=st.booleans())
    def claim(self, k: int, short: bool) -> None:
        r = self._receipt("fetch", self.seq)
        self.seq += k
        _, reply = self._call(lambda: self.sc.claim(k, 1 if short else LONG, "w", r))
        assert reply.stale == 0  # no stale entries are ever created by the scripts
        assert reply.paused == self.paused
        if self.paused:
            assert reply.jobs == []
        claimed = [(j.id, j.token, j.attempts) for j in reply.jobs]
        assert len(claimed) <= k
        for id_, token, attempts in claimed:
            assert self.state[id_] == "queued", (id_, self.state[id_])
            self.attempts[id_] += 1
            assert attempts == self.attempts[id_]
            self.state[id_] = "leased"
            self.token[id_] = token
            self.held[id_] = token
            self.old.append((id_, token))
            if short:
                self.short.add(id_)
            else:
                self.short.discard(id_)

    @rule()
    def heartbeat(self) -> None:
        pairs = sorted(self.held.items())
        r = self._receipt("beat")
        lost = set(self._call(lambda: self.sc.heartbeat("w", LONG, pairs, r))[0])
        expected = {i for i, t in self.held.items() if self.token.get(i) != t}
        assert lost == expected
        for id_ in self.held:
            if id_ not in lost:
                self.short.discard(id_)  # extended to a long lease
        for id_ in lost:
            self.held.pop(id_)

    @precondition(lambda self: bool(self.held))
    @rule(
        kind=st.sampled_from(["ok", "retry", "dead", "release"]),
        delay=st.sampled_from([0, LONG]),
        pick=st.integers(0, 99),
    )
    def finish_current(self, kind: str, delay: int, pick: int) -> None:
        id_ = sorted(self.held)[pick % len(self.held)]
        token = self.held[id_]
        applied = self._finish(id_, token, kind, delay, reaping=False)
        if self.token.get(id_) == token:
            assert applied == 1
            self._apply(id_, kind)
        else:
            assert applied == 0
            self.fenced += 1
            self.held.pop(id_, None)

    @precondition(lambda self: bool(self.old))
    @rule(kind=st.sampled_from(["ok", "retry", "dead", "release"]), pick=st.integers(0, 999))
    def finish_stale(self, kind: str, pick: int) -> None:
        id_, token = self.old[pick % len(self.old)]
        if self.token.get(id_) == token:
            return  # still current: not stale
        before = self._dump()
        assert self._finish(id_, token, kind, 0, reaping=False) == 0
        self.fenced += 1
        after = self._dump()
        assert after[:8] + after[9:] == before[:8] + before[9:], "a stale finish changed state"

    @rule()
    def crash(self) -> None:
        self.held.clear()

    @rule()
    def reap(self) -> None:
        # wait past every tiny (1 ms) lease, so that exactly the model's short leases are due
        time.sleep(0.003)
        rows = self.loop.run_until_complete(self.sc.expired(1000, DEAD))
        assert {row.id for row in rows} == self.short
        for row in rows:
            id_, token, attempts = row.id, row.token, row.attempts
            assert self.state[id_] == "leased" and id_ in self.short, (id_, self.state[id_])
            assert token == self.token[id_] and attempts == self.attempts[id_]
            kind = "retry" if attempts < MAX_ATTEMPTS else "dead"
            assert self._finish(id_, token, kind, 0, reaping=True) == 1
            self._apply(id_, kind)

    @precondition(lambda self: "dead" in self.state.values())
    @rule()
    def requeue(self) -> None:
        dead = sorted(i for i, s in self.state.items() if s == "dead")
        jobs = [(i, None) for i in dead]
        assert self._call(lambda: self.sc.requeue(jobs)) == [True] * len(dead)
        for id_ in dead:
            self.state[id_] = "queued"
            self.attempts[id_] = 0

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        # not a receipted call (it is idempotent by itself), so not the one resend_last repeats:
        # a claim re-sent across a pause or a resume still gets its first answer
        before = self._dump()
        call = self.sc.pause if paused else self.sc.resume
        changed = self.loop.run_until_complete(call())
        assert changed == (paused != self.paused)
        self.paused = paused
        assert self._dump() == before

    @precondition(lambda self: self.last is not None)
    @rule()
    def resend_last(self) -> None:
        """The last call again, as redis-py re-sends it after a lost reply: same arguments, same
        receipt. It answers as the first time and changes nothing (counters included)."""
        assert self.last is not None
        fn, reply, after = self.last
        assert self.loop.run_until_complete(fn()) == reply
        assert self._dump() == after

    # -- invariants ----------------------------------------------------------------------------

    def _dump(self) -> tuple[Any, ...]:
        p = self.r.pipeline(transaction=True)
        for key in (K.pending, K.scheduled, K.leases, K.dead):
            p.zrange(key, 0, -1, withscores=True)
        for key in (K.jobs, K.attempts, K.tokens, K.errors, K.stats):
            p.hgetall(key)
        p.keys(K.result("*"))
        out = p.execute()
        out[-1] = sorted(out[-1])
        return tuple(out)

    @invariant()
    def one_state_each(self) -> None:
        pending, scheduled, leases, dead, jobs, attempts, tokens, _, _, results = self._dump()
        sets = {
            "pending": {_s(m) for m, _ in pending},
            "scheduled": {_s(m) for m, _ in scheduled},
            "leases": {_s(m) for m, _ in leases},
            "dead": {_s(m) for m, _ in dead},
        }
        result_ids = {_s(k)[len(K.result("")) :] for k in results}
        job_ids = {_s(k) for k in jobs}
        done = result_ids - job_ids
        total = 0
        for id_, state in self.state.items():
            member = [name for name, ids in sets.items() if id_ in ids]
            if id_ in done:
                member.append("done")
            assert len(member) == 1, (id_, member)
            actual = {"pending": "queued", "scheduled": "queued", "leases": "leased"}.get(
                member[0], member[0]
            )
            assert actual == state, (id_, actual, state)
            total += 1
            if state != "done":
                assert id_ in job_ids
                assert int(attempts.get(id_.encode(), 0)) == self.attempts[id_]
                assert self.attempts[id_] <= MAX_ATTEMPTS
            if state == "leased":
                assert _s(tokens[id_.encode()]) == self.token[id_]
        # conservation: every submitted job is counted once, nothing else exists
        assert total == len(self.state) == sum(len(s) for s in sets.values()) + len(done)
        assert job_ids == {i for i, s in self.state.items() if s != "done"}
        assert int(self.r.hget(K.stats, "fenced") or 0) == self.fenced


@pytest.fixture(scope="module")
def model_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_s16_scripts_state_machine(model_redis: RedisServer, chaos_seed: int) -> None:
    QueueMachine.port = model_redis.port
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=50,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
