"""Chaos on several hosts: Redis and two workers each on a host of their own (a network namespace,
see :mod:`.netns`), the producer and the checker on the machine itself; the link of worker A's
host is cut while it runs jobs, as a pulled cable or a failed switch port would."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from aioqueue import wire
from aioqueue.testing import RedisServer

from .harness import (
    KEYS,
    REPO,
    SPEC,
    WORKER_FLAGS,
    Scenario,
    WorkerProc,
    Workers,
    eventually,
    producer,
    recovery_bound_ms,
    scaled,
    submit_lanes,
    summary,
)
from .history import check, drain, snapshot
from .netns import Network, unavailable

pytestmark = [pytest.mark.chaos, pytest.mark.anyio]


class HostRedis(RedisServer):
    """A private redis-server run on one host of ``net``, listening on that host's address only
    (protected mode off: the network is the test's own)."""

    def __init__(self, net: Network, host: str) -> None:
        self.net, self.host = net, host
        super().__init__()

    def _command(self) -> list[str]:
        own = ["--bind", self.net.addr(self.host), "--protected-mode", "no"]
        return self.net.exec(self.host, [*super()._command(), *own])

    @property
    def url(self) -> str:
        return f"redis://{self.net.addr(self.host)}:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.net.addr(self.host), self.port), 0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def start_on(workers: Workers, net: Network, host: str, url: str) -> WorkerProc:
    """A worker of the chaos queue (the plan's settings) run on ``host``, tracked by ``workers``
    like those it starts itself (stopped and checked for strays at teardown)."""
    argv = [sys.executable, "-m", "aioqueue", SPEC, "--redis-url", url]
    for name, value in WORKER_FLAGS.items():
        argv += [name] if value == "" else [name, value]
    log = workers.root / f"worker-{host}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            net.exec(host, argv), cwd=REPO, env=workers.env(), stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    proc = WorkerProc(popen, log, host)
    workers.procs.append(proc)
    return proc


@pytest.fixture
def network() -> Iterator[Network]:
    """Hosts ``redis``, ``a`` and ``b``, removed at the end however the test ends."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no network namespaces here: {reason}")
    with Network(["redis", "a", "b"]) as net:
        yield net


@pytest.fixture
def host_redis(network: Network) -> Iterator[HostRedis]:
    server = HostRedis(network, "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_cut_link_of_a_worker_host(
    network: Network, host_redis: HostRedis, scenario: Scenario
) -> None:
    """Worker A's link goes down while both its children run a job: once A's leases lapse worker
    B runs those jobs again, and when the link comes back A's late outcomes are fenced. Nothing
    is lost, no result is recorded twice, and only the jobs cut off on A ran twice."""
    hist = scenario.history("hosts: worker A's link cut")
    url = host_redis.url
    a = start_on(scenario.workers, network, "a", url)
    b = start_on(scenario.workers, network, "b", url)
    a_kids = await scenario.workers.wait_children(a)
    b_kids = await scenario.workers.wait_children(b)
    hist.t0 = time.time()
    async with producer(url) as q, Redis.from_url(url, socket_timeout=10) as r:
        await submit_lanes(hist, q, [f"h{i}" for i in range(40)], 0.4)
        await eventually(
            lambda: len(scenario.ledger().open_on(a_kids)) == 2, 10.0, "A busy", 0.005,
            progress=scenario.ledger_size,
        )  # fmt: skip
        network.cut("a")
        orphans = scenario.ledger().open_on(a_kids)
        fault = hist.fault("link of host a cut", orphans)

        def rerun_on_b() -> dict[str, float]:
            return {
                e.tag: e.t
                for e in reversed(scenario.ledger().starts_after(fault.t))
                if e.tag in orphans and e.pid in b_kids
            }

        await eventually(lambda: rerun_on_b().keys() == orphans, 10.0, "B runs A's jobs again")
        network.heal("a")
        reruns = rerun_on_b()
        drained = await drain(r, KEYS, scaled(10.0))
        snap = await snapshot(r, KEYS)
        record = check(hist, snap, scenario.ledger())
        record.update(drain_s=round(drained, 2), slowdown=round(scaled(1.0), 2))
        ended_on_a = {
            e.tag for e in scenario.ledger().entries if e.kind == "end" and e.pid in a_kids
        }
        late = orphans & ended_on_a
        await eventually(lambda: _fenced(r, len(late)), 15.0, "A's late outcomes fenced")
        record["fenced"] = int(await r.hget(KEYS.stats, "fenced") or 0)
        record["late_completions"] = len(late)
        record["first_rerun_ms"] = round((min(reruns.values()) - fault.t) * 1000, 1)
        record["last_rerun_ms"] = round((max(reruns.values()) - fault.t) * 1000, 1)
        record["completed_on"] = _completed_on(snap.results, a_kids, b_kids)
        scenario.report.add(record)
        for tag in orphans:  # the recorded result of each cut-off job is B's
            out = snap.results[hist.acked[tag]]
            assert msgspec.msgpack.decode(out.value)[1] in b_kids, (tag, b_kids)
    assert record["lost"] == 0 and record["unexpected"] == 0, summary(record)
    assert record["dup_results"] == 0 and record["duplicate_jobs"] == 0, summary(record)
    assert record["dup_exec"] <= len(orphans), summary(record)
    assert set(record["details"]["dup_tags"]) <= orphans, summary(record)
    assert record["fenced"] >= len(late) >= 1, summary(record)
    # B takes A's jobs over within lease + maintenance of the cut, plus a margin scaled to the
    # machine's measured speed (the same bound as the blackholed worker through the proxy)
    bound = recovery_bound_ms(1.8)
    for rec in record["recovery"]:
        assert rec["recovery_ms"] is not None and rec["recovery_ms"] <= bound, record["recovery"]
    assert a.running and b.running


async def _fenced(r: Redis, n: int) -> bool:
    return int(await r.hget(KEYS.stats, "fenced") or 0) >= n


def _completed_on(results: dict[str, wire.Outcome], a: list[int], b: list[int]) -> dict[str, Any]:
    """How many recorded results came from A's children and from B's."""
    out = {"a": 0, "b": 0}
    for o in results.values():
        if o.ok:
            pid = msgspec.msgpack.decode(o.value)[1]
            where = "a" if pid in a else "b" if pid in b else "other"
            out[where] = out.get(where, 0) + 1
    return out


def test_scaling_benchmark_on_hosts(tmp_path: Path) -> None:
    """``benchmarks/scaling.py --hosts`` runs each supervisor on a host of its own, reports the
    link's round trip, leaves no namespace behind, and refuses a delay the kernel can't make
    with a one-line reason."""
    if (reason := unavailable()) is not None:
        pytest.skip(f"no network namespaces here: {reason}")
    script = REPO / "benchmarks" / "scaling.py"
    argv = [sys.executable, str(script), "--quick", "--no-progress", "--no-plot", "--no-bare",
            "--out", str(tmp_path), "--hosts", "--workers", "2", "--processes", "2"]  # fmt: skip
    before = _namespaces()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(120))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hosts: 2 network namespace(s)" in done.stdout
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert data["machine"]["hosts"]["rtt_ms"] > 0
    [run] = data["runs"]
    assert (run["processes"], run["workers"]) == (2, 2)
    assert _namespaces() <= before
    delayed = subprocess.run([*argv, "--delay-ms", "0.5"], capture_output=True, text=True,
                             timeout=scaled(120))  # fmt: skip
    if delayed.returncode != 0:  # a kernel without netem
        assert delayed.returncode == 2 and "needs tc netem" in delayed.stderr, delayed.stderr
        assert "Traceback" not in delayed.stderr


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}
