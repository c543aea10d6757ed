"""Several hosts on one machine: network namespaces joined by veth links to one switch.

:class:`Network` makes, for one run, a namespace per host (``redis``, ``a``, ``b`` ...), each with
one interface ``eth0`` linked to a bridge in a namespace of its own (the switch), and one link
from the root namespace, where the test or benchmark process itself runs, to the same switch.
Every address is in one ``/24`` of ``10.77.0.0/16`` not routed in the root namespace yet.
A host's link can be cut (``eth0`` down: its packets go nowhere, its sockets stay open) and
healed, or slowed with ``tc netem`` where the kernel has it.

Names carry the creating process's pid, so concurrent and crashed runs never collide; a later run
deletes the namespaces of runs whose process is gone. Linux only, and root (``CAP_NET_ADMIN``)
only: :func:`unavailable` says why not. Standard library only, so that the benchmarks can load
this file too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

__all__ = ("Network", "NetworkError", "unavailable")

PREFIX = "aioq-"
_NAME = re.compile(rf"^{PREFIX}([0-9a-f]+)-\d+-")
_counter = itertools.count()


class NetworkError(RuntimeError):
    """Raised when a namespace, link or qdisc can't be set up; the message has ``ip``'s reply."""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces can't be made here (no ``ip`` command, not root, ...), or None."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"{PREFIX}{os.getpid():x}-{next(_counter)}-probe"
    try:
        _run("ip", "netns", "add", name)
    except NetworkError as exc:
        return f"ip netns add failed (root is needed): {exc}"
    with contextlib.suppress(NetworkError):
        _run("ip", "netns", "del", name)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Delete the namespaces left by runs whose process is gone; return their names."""
    try:
        names = [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line]
    except NetworkError:
        return []
    gone = []
    for name in names:
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1), 16)):
            with contextlib.suppress(NetworkError):
                _run("ip", "netns", "del", name)
                gone.append(name)
    return gone


def _free_subnet() -> ipaddress.IPv4Network:
    """A ``10.77.N.0/24`` that no route of the root namespace covers."""
    used = []
    for line in _run("ip", "-4", "route", "show").splitlines():
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(line.split()[0], strict=False))
    start = os.getpid() % 250
    for i in range(250):
        net = ipaddress.IPv4Network(f"10.77.{(start + i) % 250 + 1}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise NetworkError("no free /24 in 10.77.0.0/16")


class Network:
    """Hosts joined by one switch, plus a link from the root namespace (host ``"root"``).

    :param hosts: the hosts' short names (letters and digits, up to 10 characters each).
    """

    ROOT = "root"

    def __init__(self, hosts: Sequence[str]) -> None:
        for h in hosts:
            if not re.fullmatch(r"[a-z0-9]{1,10}", h) or h == self.ROOT:
                raise ValueError(f"bad host name {h!r}: 1-10 lowercase letters or digits")
        self.hosts = list(hosts)
        self.tag = f"{os.getpid():x}-{next(_counter)}"
        self.switch = f"{PREFIX}{self.tag}-switch"
        self.root_link = f"aq{self.tag.replace('-', '')}"[:15]
        self.subnet: ipaddress.IPv4Network | None = None
        self._made: list[str] = []  # namespaces made, for teardown

    def __repr__(self) -> str:
        return f"Network({self.hosts}, subnet={self.subnet})"

    def ns(self, host: str) -> str:
        """The namespace of ``host``."""
        if host not in self.hosts:
            raise KeyError(host)
        return f"{PREFIX}{self.tag}-{host}"

    def addr(self, host: str) -> str:
        """The IPv4 address of ``host`` (``"root"``: the root namespace's end of its link)."""
        assert self.subnet is not None, "network not created"
        index = 1 if host == self.ROOT else 10 + self.hosts.index(host)
        return str(self.subnet.network_address + index)

    def exec(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` to run on ``host`` (``ip netns exec`` replaces itself with the command, so
        the process started is the command's own: its pid, its signals)."""
        if host == self.ROOT:
            return list(argv)
        return ["ip", "netns", "exec", self.ns(host), *argv]

    # -- set up and tear down ------------------------------------------------------------------

    def create(self) -> Network:
        """Make the namespaces and links; on any failure undo what was made and raise
        :class:`NetworkError`."""
        sweep()
        try:
            self.subnet = _free_subnet()
            self._add_ns(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for host in self.hosts:
                ns = self.ns(host)
                self._add_ns(ns)
                _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                     "peer", "name", f"p-{host}", "netns", self.switch)  # fmt: skip
                self._plug(f"p-{host}")
                _run("ip", "-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "link", "add", self.root_link, "type", "veth",
                 "peer", "name", "p-root", "netns", self.switch)  # fmt: skip
            self._plug("p-root")
            _run("ip", "addr", "add", f"{self.addr(self.ROOT)}/24", "dev", self.root_link)
            _run("ip", "link", "set", self.root_link, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _plug(self, port: str) -> None:
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")

    def destroy(self) -> None:
        """Remove every namespace and link made (the processes run in them are the caller's to
        stop first: a namespace lives on while a process is in it)."""
        with contextlib.suppress(NetworkError):
            _run("ip", "link", "del", self.root_link)
        for ns in reversed(self._made):
            with contextlib.suppress(NetworkError):
                _run("ip", "netns", "del", ns)
        self._made.clear()

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- faults ----------------------------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Take ``host``'s link down: nothing it sends leaves, nothing reaches it; its sockets
        stay open (a pulled cable, not a closed connection)."""
        _run("ip", "-n", self.ns(host), "link", "set", "eth0", "down")

    def heal(self, host: str) -> None:
        """Bring ``host``'s link back up (its route comes back with it)."""
        _run("ip", "-n", self.ns(host), "link", "set", "eth0", "up")

    def delay(self, host: str, ms: float) -> None:
        """Delay every packet to and from ``host`` by ``ms`` milliseconds (``tc netem`` on both
        ends of its link).

        :raises NetworkError: where the kernel has no netem (``CONFIG_NET_SCH_NETEM``).
        """
        for ns, dev in ((self.ns(host), "eth0"), (self.switch, f"p-{host}")):
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root",
                 "netem", "delay", f"{ms}ms")  # fmt: skip
