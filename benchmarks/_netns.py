"""``scaling.py --hosts``: each worker supervisor on a host of its own, linked to Redis.

The hosts are Linux network namespaces joined by veth links to one bridge (the chaos suite's
``tests/chaos/netns.py``, loaded from its file), so a worker reaches Redis through a real network
stack and a switch instead of loopback; ``--delay-ms`` adds ``tc netem`` delay on each host's link,
each way. Redis and the producer stay in the machine's own namespace (host ``root``): Redis listens
on loopback for the producer and on the root end of its link for the workers. Root only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import _common

__all__ = ("Hosts", "hosts", "private_redis", "unavailable")

_NETNS = _common.REPO_ROOT / "tests" / "chaos" / "netns.py"

_RTT = """
import statistics, sys, time, redis
r = redis.Redis.from_url(sys.argv[1])
r.ping()
times = []
for _ in range(200):
    t = time.perf_counter()
    r.ping()
    times.append((time.perf_counter() - t) * 1000)
print(statistics.median(times))
"""


def _module() -> ModuleType:
    name = "_aioqueue_netns"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _NETNS)
    if spec is None or spec.loader is None:
        raise ImportError(f"can't load {_NETNS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def unavailable() -> str | None:
    """Why hosts can't be made here, or None."""
    if not _NETNS.exists():
        return f"{_NETNS} is missing"
    reason: str | None = _module().unavailable()
    return reason


@dataclass
class Hosts:
    """The network: ``w0`` ... ``w{n-1}``, one per supervisor, and the root end for Redis."""

    net: Any  # tests/chaos/netns.py's Network
    delay_ms: float

    @property
    def redis_address(self) -> str:
        """Where Redis listens for the workers (the root namespace's end of its link)."""
        return str(self.net.addr(self.net.ROOT))

    def redis_args(self) -> tuple[str, ...]:
        """``redis-server`` arguments: loopback for the producer, the link for the workers."""
        return ("--bind", "127.0.0.1", self.redis_address, "--protected-mode", "no")

    def worker_url(self, url: str) -> str:
        """``url`` (on loopback) as the workers reach it."""
        return url.replace("//127.0.0.1:", f"//{self.redis_address}:", 1)

    def place(self, worker: _common.Worker, i: int) -> _common.Worker:
        """Run ``worker`` (not started yet) on host ``w{i}``, against the linked address."""
        command = list(worker.command)
        at = command.index("--redis-url") + 1
        command[at] = self.worker_url(command[at])
        worker.command = self.net.exec(f"w{i}", command)
        return worker

    def rtt_ms(self, url: str) -> float:
        """Median round trip of a ``PING`` from host ``w0`` to Redis, in ms."""
        argv = self.net.exec("w0", [sys.executable, "-c", _RTT, self.worker_url(url)])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        return float(out.stdout.strip())

    def describe(self, rtt_ms: float) -> str:
        n = len(self.net.hosts)
        delay = f"{self.delay_ms:g} ms netem delay each way" if self.delay_ms else "no delay"
        return (
            f"hosts: {n} network namespace(s) w0..w{n - 1}, one supervisor each, linked to Redis "
            f"by veth + bridge ({self.net.subnet}), {delay}; PING from w0 to Redis: median "
            f"{rtt_ms:.3f} ms"
        )


@contextlib.contextmanager
def hosts(n: int, delay_ms: float = 0.0) -> Iterator[Hosts]:
    """``n`` hosts for as long as they are used (torn down however the block ends).

    :raises RuntimeError: naming why namespaces or the delay can't be set up here.
    """
    netns = _module()
    reason = netns.unavailable()
    if reason is not None:
        raise RuntimeError(f"--hosts needs network namespaces: {reason}")
    with netns.Network([f"w{i}" for i in range(n)]) as net:
        if delay_ms:
            try:
                for host in net.hosts:
                    net.delay(host, delay_ms)
            except netns.NetworkError as exc:
                raise RuntimeError(
                    f"--delay-ms needs tc netem, which this kernel lacks "
                    f"(CONFIG_NET_SCH_NETEM): {exc}"
                ) from None
        yield Hosts(net, delay_ms)


@contextlib.contextmanager
def private_redis(h: Hosts) -> Iterator[_common.RedisTarget]:
    """A private ``redis-server`` in the root namespace that the hosts reach over their links."""
    with _common._redis_server_class()(extra_args=h.redis_args()) as server:
        pid = server.process.pid if server.process is not None else None
        yield _common.RedisTarget(str(server.url), private=True, pid=pid)
