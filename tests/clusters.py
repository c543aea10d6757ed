"""Private Redis Cluster and Sentinel deployments on loopback ports, for the tests that run
aioqueue on them and for the cluster benchmark; built on :class:`aioqueue.testing.RedisServer`.

Both are formed in a few seconds and offer the faults their tests need: kill a node, fail a
master over, move a slot. Each fault returns only once every live node (or Sentinel) agrees on
the new layout, so a test measures aioqueue's recovery, not the deployment's.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable
from typing import Self

import redis

from aioqueue.testing import RedisServer

__all__ = ("ClusterServers", "SentinelServers")


SLOTS = 16384
_REPL_FAST = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together while they are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _port(addr: str) -> int:
    """The port of a ``host:port[@bus]`` address."""
    return int(addr.rsplit(":", 1)[1].split("@")[0])


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=server.port, socket_timeout=5, socket_connect_timeout=1
    )


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` (errors count as false) until it is true, else raise RuntimeError."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class _Servers:
    """Processes started together in ``with``: all stopped at its end, or if one can't start."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClusterServers(_Servers):
    """A private Redis Cluster on loopback ports: ``masters`` masters with ``replicas`` replicas
    each, formed by hand (slots, MEET, REPLICATE) in a few seconds. Its nodes can be killed,
    failed over and have their slots moved while clients use it; each of those returns once every
    live node agrees on the new layout.

    :param node_timeout_ms: ``cluster-node-timeout``: how long a silent master is given before its
        replica takes over.
    :param full_coverage: ``cluster-require-full-coverage``: when true, every node refuses
        commands while some slot has no live master.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        full_coverage: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replica count")
        self.n_masters, self.n_replicas = masters, replicas
        count = masters * (1 + replicas)
        ports = _free_ports(2 * count)
        self.bus: dict[int, int] = {}  # node index -> cluster bus port
        self.nodes: list[RedisServer] = []
        for i in range(count):
            self.bus[i] = ports[count + i]
            args = ("--cluster-enabled", "yes", "--cluster-port", str(self.bus[i]),
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-require-full-coverage", "yes" if full_coverage else "no",
                    "--shutdown-timeout", "0", *_REPL_FAST, *extra_args)  # fmt: skip
            node = RedisServer(extra_args=args)
            node.port = ports[i]
            self.nodes.append(node)
        self.ids: dict[int, str] = {}  # port -> node id

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, assign the slots, join the nodes, attach the replicas; return once
        every node says ``cluster_state:ok`` and agrees on who owns each slot."""
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            with _client(n) as r:
                self.ids[n.port] = str(r.execute_command("CLUSTER MYID"), "ascii")
        masters = self.nodes[: self.n_masters]
        for i, m in enumerate(masters):
            lo, hi = i * SLOTS // self.n_masters, (i + 1) * SLOTS // self.n_masters - 1
            with _client(m) as r:
                r.execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
        for n in self.nodes[1:]:
            with _client(n) as r:
                r.execute_command("CLUSTER MEET", "127.0.0.1", self.nodes[0].port, self.bus[0])
        _wait(lambda: all(len(self.view(n)) == len(self.nodes) for n in self.nodes), timeout,
              "every node to know every other")  # fmt: skip
        for i, n in enumerate(self.nodes[self.n_masters :]):
            with _client(n) as r:
                r.execute_command("CLUSTER REPLICATE", self.ids[masters[i % self.n_masters].port])
        self.wait_stable(timeout)

    def view(self, node: RedisServer) -> dict[str, dict[str, object]]:
        """``CLUSTER NODES`` as ``node`` sees it: ``host:port`` -> node id, flags, master id,
        slots (ranges), ... (as redis-py parses it)."""
        with _client(node) as r:
            nodes: dict[str, dict[str, object]] = r.execute_command("CLUSTER NODES")
        return nodes

    def _owners(self, node: RedisServer) -> list[tuple[int, int, int]] | None:
        """(first slot, last slot, port) of each live master in ``node``'s view; None unless the
        view is settled (no handshake, every slot owned)."""
        out, covered = [], 0
        for addr, info in self.view(node).items():
            flags = str(info["flags"])
            if "handshake" in flags or "noaddr" in flags:
                return None
            if "master" in flags and "fail" not in flags:
                for span in info["slots"]:  # type: ignore[attr-defined]
                    lo, hi = int(span[0]), int(span[-1])
                    out.append((lo, hi, _port(addr)))
                    covered += hi - lo + 1
        return sorted(out) if covered == SLOTS else None

    def stable(self) -> bool:
        """True when every live node says ``cluster_state:ok``, all agree on who owns each slot,
        every owner is alive, and every live replica's link to its master is up."""
        live = self.live()
        owners = [self._owners(n) for n in live]
        if owners[0] is None or any(o != owners[0] for o in owners):
            return False
        ports = {n.port for n in live}
        if any(port not in ports for _, _, port in owners[0]):
            return False
        for n in live:
            with _client(n) as r:
                if r.cluster("INFO")["cluster_state"] != "ok":
                    return False
                repl = r.info("replication")
                if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                    return False
        return True

    def wait_stable(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`stable`."""
        _wait(self.stable, timeout, "the cluster to settle")

    def keyslot(self, key: str) -> int:
        """The slot of ``key``."""
        with _client(self.live()[0]) as r:
            return int(r.execute_command("CLUSTER KEYSLOT", key))

    def masters(self) -> list[RedisServer]:
        """The live masters that own slots (as the first live node sees it)."""
        ports = sorted({port for _, _, port in self._owners(self.live()[0]) or []})
        return [self._by_port(p) for p in ports]

    def owner(self, slot: int) -> RedisServer:
        """The master that owns ``slot`` (as the first live node sees it)."""
        for lo, hi, port in self._owners(self.live()[0]) or []:
            if lo <= slot <= hi:
                return self._by_port(port)
        raise RuntimeError(f"no live master owns slot {slot}")

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The live replicas of ``master`` (as it sees them)."""
        mid = self.ids[master.port]
        view = self.view(master)
        ports = [_port(a) for a, i in view.items()
                 if i["master_id"] == mid and "fail" not in str(i["flags"])]  # fmt: skip
        return [self._by_port(p) for p in ports if self._by_port(p).running]

    def _by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def failover(self, replica: RedisServer, timeout: float = 30.0) -> None:
        """``CLUSTER FAILOVER`` on ``replica`` and wait until it owns its master's slots in every
        live node's view. Redis answers OK at once and may give up after a while: then ask
        again."""
        rid = self.ids[replica.port]

        def promoted() -> bool:
            return (
                "master" in str(self.view(replica)[f"127.0.0.1:{replica.port}"]["flags"])
                and self.stable()
                and any(port == replica.port for _, _, port in self._owners(replica) or [])
            )

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with _client(replica) as r:
                r.execute_command("CLUSTER FAILOVER")
            with contextlib.suppress(RuntimeError):
                _wait(promoted, min(6.0, max(0.1, deadline - time.monotonic())), f"{rid} promoted")
                return
        raise RuntimeError(f"replica {replica.port} was not promoted in {timeout:g}s")

    def move_slot(self, slot: int, target: RedisServer, batch: int = 100) -> int:
        """Move ``slot`` to the master ``target`` (IMPORTING/MIGRATING, MIGRATE in batches, then
        SETSLOT NODE on every live master), while clients go on using it; how many keys moved."""
        source = self.owner(slot)
        sid, tid = self.ids[source.port], self.ids[target.port]
        moved = 0
        with _client(source) as src, _client(target) as dst:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", sid)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", tid)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            dst.execute_command("CLUSTER SETSLOT", slot, "NODE", tid)
            src.execute_command("CLUSTER SETSLOT", slot, "NODE", tid)
        for n in self.live():
            if n not in (source, target):
                with _client(n) as r, contextlib.suppress(redis.ResponseError):
                    r.execute_command("CLUSTER SETSLOT", slot, "NODE", tid)  # replicas refuse
        self.wait_stable()
        return moved

    def flush_scripts(self) -> None:
        """``SCRIPT FLUSH`` on every live node (a node that never loaded a client's scripts)."""
        for n in self.live():
            with _client(n) as r:
                r.script_flush()

    def redirects(self) -> dict[str, int]:
        """Error replies sent so far by every live node, by kind (MOVED, ASK, TRYAGAIN,
        CLUSTERDOWN...), from ``INFO errorstats``."""
        total: dict[str, int] = {}
        for n in self.live():
            with _client(n) as r:
                for name, stat in r.info("errorstats").items():
                    kind = name.removeprefix("errorstat_")
                    total[kind] = total.get(kind, 0) + int(stat["count"])
        return total

    def stop(self) -> None:
        """Stop every node and remove its data."""
        for n in self.nodes:
            n.stop()


class _Sentinel(RedisServer):
    """A ``redis-server --sentinel`` process watching one master."""

    def __init__(self, service: str, master_port: int, down_after_ms: int, failover_ms: int):
        super().__init__()
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {service} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_ms}\n"
        )
        self.conf = conf

    def _command(self) -> list[str]:
        return [self.executable, str(self.conf), "--sentinel", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"]  # fmt: skip


class SentinelServers(_Servers):
    """A private master with ``replicas`` replicas, watched by ``sentinels`` Sentinels (quorum 2)
    on loopback ports, under the service name ``service``.

    :param down_after_ms: ``down-after-milliseconds``: how long a silent master is given before
        the Sentinels fail it over.
    :param failover_timeout_ms: ``failover-timeout``.
    """

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        service: str = "aioqueue",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
    ) -> None:
        self.service = service
        self.servers = [RedisServer(extra_args=_REPL_FAST)]
        master = self.servers[0].port
        for _ in range(replicas):
            args = ("--replicaof", "127.0.0.1", str(master), *_REPL_FAST)
            self.servers.append(RedisServer(extra_args=args))
        self.sentinels = [
            _Sentinel(service, master, down_after_ms, failover_timeout_ms) for _ in range(sentinels)
        ]

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL naming every Sentinel and the service."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the servers and the Sentinels; return once every Sentinel knows the master, its
        replicas and the other Sentinels (so that they can fail it over)."""
        for s in [*self.servers, *self.sentinels]:
            s.start()
        self.wait_ready(timeout)

    def _masters(self, sentinel: RedisServer) -> dict[str, object]:
        with _client(sentinel) as r:
            state: dict[str, object] = r.sentinel_master(self.service)
        return state

    def master(self) -> RedisServer:
        """The server the Sentinels name as master (the first live Sentinel asked)."""
        for s in self.sentinels:
            if s.running:
                port = int(self._masters(s)["port"])  # type: ignore[call-overload]
                return next(x for x in self.servers if x.port == port)
        raise RuntimeError("no live Sentinel")

    def ready(self) -> bool:
        """Every live Sentinel names the same live master, which it sees up with all its live
        replicas linked, and knows every other live Sentinel."""
        live = [s for s in self.sentinels if s.running]
        states = [self._masters(s) for s in live]
        ports = {int(st["port"]) for st in states}  # type: ignore[call-overload]
        if len(ports) != 1:
            return False
        master = next((x for x in self.servers if x.port in ports and x.running), None)
        if master is None:
            return False
        with _client(master) as r:
            repl = r.info("replication")
        linked = sum(1 for k, v in repl.items() if k.startswith("slave") and isinstance(v, dict)
                     and v.get("state") == "online")  # fmt: skip
        replicas = sum(1 for x in self.servers if x.running and x is not master)
        return (
            repl["role"] == "master"
            and linked == replicas
            and all(st["is_master"] and not st["is_sdown"] for st in states)
            and all(int(st["num-slaves"]) >= replicas for st in states)  # type: ignore[call-overload]
            and all(int(st["num-other-sentinels"]) >= len(live) - 1 for st in states)  # type: ignore[call-overload]
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`ready`."""
        _wait(self.ready, timeout, f"Sentinel to agree on the {self.service} master")

    def kill_master(self, sig: int = signal.SIGKILL) -> RedisServer:
        """Kill the current master; return it."""
        master = self.master()
        master.kill(sig)
        return master

    def wait_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until every live Sentinel names a live master other than ``old`` and that server
        says it is a master; return it."""

        def promoted() -> bool:
            live = [s for s in self.sentinels if s.running]
            ports = {int(self._masters(s)["port"]) for s in live}  # type: ignore[call-overload]
            if len(ports) != 1 or old.port in ports:
                return False
            new = next(x for x in self.servers if x.port in ports)
            with _client(new) as r:
                return bool(new.running and r.info("replication")["role"] == "master")

        _wait(promoted, timeout, f"a new {self.service} master")
        return self.master()

    def stop(self) -> None:
        """Stop every Sentinel and server and remove their data."""
        for s in [*self.sentinels, *self.servers]:
            s.stop()
