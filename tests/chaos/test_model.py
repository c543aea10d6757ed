"""A Hypothesis state machine that drives the Lua scripts directly against a private Redis.

Rules: submit (new or duplicate id, now or delayed), claim with a tiny (1 ms) or a long lease,
heartbeat, finish ok/retry/dead/release with the current or a stale token, a worker crash (its
tokens are forgotten), requeue of the dead letters, and reaping: a real 3 ms wait, then
``expired`` and ``finish`` with ``reaping``. Delays are 0 or a minute, and reaping waits past
every tiny lease, so each step's outcome is independent of timing (Hypothesis can replay it).
After every step each job must be in exactly one state, that state must be the model's,
attempts must match, and the counts must be conserved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aioqueue.testing import RedisServer

try:
    from aioqueue.scripts import _SOURCES
except ImportError:  # the scripts' argument layout changed with them: the model must follow
    pytest.skip(
        "aioqueue.scripts no longer exposes _SOURCES; the model drives the old script layout",
        allow_module_level=True,
    )

from .harness import KEYS

pytestmark = [pytest.mark.chaos]

K = KEYS
MAX_ATTEMPTS = 3
LONG = 60_000


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class QueueMachine(RuleBasedStateMachine):
    port = 0

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis(port=self.port)
        self.r.flushall()
        self.sc = {name: self.r.register_script(src) for name, src in _SOURCES.items()}
        self.state: dict[str, str] = {}  # id -> queued, leased, done, dead
        self.attempts: dict[str, int] = {}
        self.token: dict[str, str] = {}  # current lease holder token, per leased id
        self.short: set[str] = set()  # leased ids whose lease may have run out
        self.held: dict[str, str] = {}  # what the live worker believes it holds
        self.old: list[tuple[str, str]] = []  # every token ever handed out
        self.n = 0
        self.seq = 0
        self.fenced = 0

    def teardown(self) -> None:
        self.r.close()

    # -- helpers -------------------------------------------------------------------------------

    def _finish(self, id_: str, token: str, kind: str, delay: int, reaping: bool) -> int:
        keys = [K.jobs, K.attempts, K.tokens, K.leases, K.priority, K.pending, K.scheduled,
                K.dead, K.errors, K.wake, K.stats, K.result(id_), K.jobs]  # fmt: skip
        # every call's outcome bytes are unique, as real ones are (they carry the attempt number,
        # the error and a timestamp); only a retried call repeats them
        self.calls = getattr(self, "calls", 0) + 1
        tag = f"{id_}/{token}/{kind}/{'reaper' if reaping else 'holder'}/{self.calls}".encode()
        args = [K.done_channel, id_, token, kind, b"result " + tag, b"error " + tag, delay, LONG,
                "0", "1" if reaping else "0"]  # fmt: skip
        return int(self.sc["finish"](keys=keys, args=args)[0])

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
        keys = [K.jobs, K.pending, K.scheduled, K.priority, K.wake, K.result(id_), K.jobs]
        reply = self.sc["submit"](keys=keys, args=[id_, b"env-" + id_.encode(), 0, delay, "0"])
        created = bool(reply[1])
        assert _s(reply[0]) == id_
        # an id is admitted again once it is gone for good (neither a job nor a result)
        assert created == (id_ not in self.state), (id_, self.state.get(id_))
        if created:
            self.state[id_] = "queued"
            self.attempts[id_] = 0

    @rule(k=st.integers(1, 3), short=st.booleans())
    def claim(self, k: int, short: bool) -> None:
        keys = [K.pending, K.scheduled, K.priority, K.jobs, K.attempts, K.tokens, K.leases,
                K.wake, K.stats]  # fmt: skip
        reply = self.sc["claim"](keys=keys, args=[k, 1 if short else LONG, "w:", self.seq])
        self.seq += k
        assert int(reply[1]) == 0  # no stale entries are ever created by the scripts
        claimed = [
            (_s(reply[i]), _s(reply[i + 1]), int(reply[i + 2])) for i in range(2, len(reply), 4)
        ]
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
        pairs: list[Any] = []
        for id_, token in sorted(self.held.items()):
            pairs += [id_, token]
        lost = {_s(x) for x in self.sc["heartbeat"](
            keys=[K.leases, K.tokens, K.workers], args=["w", LONG, *pairs])}  # fmt: skip
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
        assert self._dump() == before, "a stale finish changed state"

    @rule()
    def crash(self) -> None:
        self.held.clear()

    @rule()
    def reap(self) -> None:
        # wait past every tiny (1 ms) lease, so that exactly the model's short leases are due
        time.sleep(0.003)
        reply = self.sc["expired"](keys=[K.leases, K.tokens, K.attempts, K.jobs], args=[1000])
        assert {_s(reply[i]) for i in range(0, len(reply), 4)} == self.short
        for i in range(0, len(reply), 4):
            id_, token, attempts = _s(reply[i]), _s(reply[i + 1]), int(reply[i + 2])
            assert self.state[id_] == "leased" and id_ in self.short, (id_, self.state[id_])
            assert token == self.token[id_] and attempts == self.attempts[id_]
            kind = "retry" if attempts < MAX_ATTEMPTS else "dead"
            assert self._finish(id_, token, kind, 0, reaping=True) == 1
            self._apply(id_, kind)

    @precondition(lambda self: "dead" in self.state.values())
    @rule()
    def requeue(self) -> None:
        dead = sorted(i for i, s in self.state.items() if s == "dead")
        keys = [K.dead, K.attempts, K.errors, K.pending, K.priority, K.wake, K.jobs]
        keys += [K.result(i) for i in dead]
        assert [int(x) for x in self.sc["requeue"](keys=keys, args=dead)] == [1] * len(dead)
        for id_ in dead:
            self.state[id_] = "queued"
            self.attempts[id_] = 0

    # -- invariants ----------------------------------------------------------------------------

    def _dump(self) -> tuple[Any, ...]:
        p = self.r.pipeline(transaction=True)
        for key in (K.pending, K.scheduled, K.leases, K.dead):
            p.zrange(key, 0, -1, withscores=True)
        for key in (K.jobs, K.attempts, K.tokens, K.errors):
            p.hgetall(key)
        p.keys(K.result("*"))
        out = p.execute()
        out[-1] = sorted(out[-1])
        return tuple(out)

    @invariant()
    def one_state_each(self) -> None:
        pending, scheduled, leases, dead, jobs, attempts, tokens, _, results = self._dump()
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
