"""The one client factory: a Redis URL in, the asyncio client that serves it out.

Three kinds of URL:

* ``redis://``, ``rediss://``, ``unix://``: one server, in redis-py's own URL format;
* ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS): a
  Redis Cluster, found through any of the nodes named (default port 6379);
* ``redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/DB]``
  (``rediss+sentinel://``): the master that the Sentinels at those addresses name for
  ``SERVICE`` (default port 26379). The credentials are the master's; Sentinels that ask for
  their own take ``?sentinel_username=...&sentinel_password=...``.

Other query options (``?ssl_cert_reqs=none``, ``?client_name=...``) go to every connection, as
in redis-py's URLs, and win over the settings below.

Whatever the kind, the client behaves the same for aioqueue: at most ``max_connections``
commands in flight, callers beyond that waiting for one to end; a command whose connection is
lost is retried ``retries`` times with backoff (every write aioqueue makes is idempotent), then
the error is raised. On a cluster, all of a queue's keys share one slot (see :mod:`.keys`), so
each of its scripts and blocking pops goes to that slot's master; MOVED and ASK replies re-route
the command, and CLUSTERDOWN, TRYAGAIN or an unknown slot (a failover or a slot move under way)
count as a lost connection. A pub/sub subscription goes to the master of its channel's slot;
classic ``PUBLISH`` reaches every node of a cluster, so it receives wherever the message was
sent. Through Sentinel, each new connection asks the Sentinels for the current master.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode

from redis import exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff

__all__ = ("CLUSTER_RETRY_ON", "RETRY_ON", "SCHEMES", "Target", "client", "parse")

Kind = Literal["server", "cluster", "sentinel"]

SCHEMES = (
    "redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://",
    "redis+sentinel://", "rediss+sentinel://",
)  # fmt: skip
_KINDS: dict[str, Kind] = {
    "redis": "server", "rediss": "server", "unix": "server",
    "redis+cluster": "cluster", "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel", "rediss+sentinel": "sentinel",
}  # fmt: skip
_DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}
_EXAMPLE = {
    "cluster": "redis+cluster://host1:6379,host2:6379",
    "sentinel": "redis+sentinel://host1:26379,host2:26379/mymaster",
}
_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")

#: Errors that a retry may cure: a lost connection or Redis loading (BusyLoadingError is a
#: ConnectionError), and on a cluster a failover or a slot move under way (CLUSTERDOWN, TRYAGAIN,
#: a slot no node serves yet, too many redirects).
RETRY_ON: tuple[type[Exception], ...] = (rex.ConnectionError, rex.TimeoutError)
CLUSTER_RETRY_ON: tuple[type[Exception], ...] = (
    *RETRY_ON, rex.ClusterError, rex.TryAgainError, rex.SlotNotCoveredError,
)  # fmt: skip
_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
#: Connections per cluster node beyond ``max_connections`` (which bounds commands in flight):
#: room for a pub/sub subscription and a pipeline, which don't count as commands.
_NODE_HEADROOM = 2


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed URL: which kind of deployment, and how to reach it.

    :ivar nodes: the cluster nodes or the Sentinels named (none for a single server).
    :ivar service: the Sentinel service name.
    :ivar options: connection settings as redis-py names them: credentials, TLS, query options.
    :ivar sentinel: the Sentinels' own credentials.
    """

    kind: Kind
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    sentinel: dict[str, Any] = field(default_factory=dict)


def parse(url: str) -> Target:
    """Parse a Redis URL of any of the :data:`SCHEMES`.

    :raises ValueError: saying what is wrong with it.
    """
    scheme, sep, rest = url.partition("://")
    kind = _KINDS.get(scheme.lower()) if sep else None
    if kind is None:
        raise ValueError(f"use one of the schemes {', '.join(SCHEMES)}")
    if kind == "server":
        return Target("server", options=dict(parse_url(url)))
    tls = scheme.lower().startswith("rediss")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        what = "node" if kind == "cluster" else "Sentinel"
        raise ValueError(f"name at least one {what} as host:port, as in {_EXAMPLE[kind]}")
    nodes = tuple(_node(h, _DEFAULT_PORT[kind]) for h in hosts.split(","))
    pairs = parse_qsl(query, keep_blank_values=True)
    sentinel = {k: v for k, v in pairs if k in _SENTINEL_AUTH and v}
    rebuilt = f"{'rediss' if tls else 'redis'}://{userinfo}{at}localhost"
    rebuilt += "/?" + urlencode([(k, v) for k, v in pairs if k not in _SENTINEL_AUTH])
    options = dict(parse_url(rebuilt))
    for name in ("host", "port", "connection_class"):
        options.pop(name, None)
    db = int(cast(int, options.pop("db", 0) or 0))
    service = None
    if kind == "cluster":
        if path not in ("", "0") or db:
            raise ValueError("a cluster has only db 0: name no db")
    else:
        parts = path.split("/")
        service = unquote(parts[0])
        if not service:
            raise ValueError(f"name the Sentinel service after the hosts, as in {_EXAMPLE[kind]}")
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(f"only a db number may follow the service name, got '/{path}'")
        if len(parts) == 2:
            db = int(parts[1])
    return Target(kind, nodes, service, db, tls, options, sentinel)


def _node(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6 address]:port`` as (host, port)."""
    if not text:
        raise ValueError("the list of hosts has an empty entry")
    if text.startswith("["):
        host, close, port = text[1:].partition("]")
        if not close or (port and not port.startswith(":")):
            raise ValueError(f"{text!r} is not [address]:port")
        port = port[1:]
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:6379")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port:
        return unquote(host), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port (1-65535)")
    return unquote(host), int(port)


def client(
    url: str,
    *,
    max_connections: int,
    connect_timeout: float,
    socket_timeout: float,
    retries: int,
) -> Redis:
    """A client for the deployment at ``url`` (see the module's text for what it promises).

    A cluster's client is a :class:`~redis.asyncio.cluster.RedisCluster`: it answers every
    command aioqueue sends as :class:`~redis.asyncio.Redis` does, and is typed as one here.

    :param max_connections: commands in flight at most; callers beyond wait for one to end
        (up to ``connect_timeout + socket_timeout``, then ``ConnectionError``).
    :param connect_timeout: seconds to wait for a connection to a server.
    :param socket_timeout: seconds to wait for a reply (a blocking pop's timeout must be below).
    :param retries: retries of a command that met one of :data:`RETRY_ON` (on a cluster,
        :data:`CLUSTER_RETRY_ON`).
    :raises ValueError: the URL is malformed (see :func:`parse`).
    """
    target = parse(url)
    settings: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
    wait = connect_timeout + socket_timeout
    retry = _Retry(_BACKOFF, retries)
    if target.kind == "server":
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=wait, retry=retry,
            retry_on_error=list(RETRY_ON), **settings,
        )  # fmt: skip
        return Redis.from_pool(pool)
    if target.kind == "sentinel":
        return _sentinel_master(target, max_connections, wait, retry, settings)
    cluster = _Cluster(
        commands=max_connections,
        retries=retries,
        wait=wait,
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        require_full_coverage=False,  # a queue whose slot is served works on
        max_connections=max_connections + _NODE_HEADROOM,
        retry=Retry(NoBackoff(), 0),  # retried in _Cluster.execute_command, with backoff
        ssl=target.tls,
        **{**settings, **target.options},
    )
    return cast(Redis, cluster)


# -- Redis Cluster ---------------------------------------------------------------------------


class _Cluster(RedisCluster):
    """A cluster client that bounds commands in flight (redis-py's raises MaxConnectionsError
    at once) and retries with backoff (redis-py's retries at once, no backoff)."""

    def __init__(self, *, commands: int, retries: int, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._commands = asyncio.Semaphore(commands)
        self._retries = retries
        self._wait = wait

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._wait):
                await self._commands.acquire()
        except TimeoutError:
            raise rex.ConnectionError("No connection available.") from None
        try:
            failures = 0
            while True:
                try:
                    return await super().execute_command(*args, **kwargs)
                except CLUSTER_RETRY_ON:
                    failures += 1
                    if failures > self._retries:
                        raise
                    await asyncio.sleep(_BACKOFF.compute(failures))
        finally:
            self._commands.release()

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        """Learn the cluster's layout; no node answering is a lost connection (retried), not
        redis-py's RedisClusterException."""
        try:
            return await super().initialize(*args, **kwargs)
        except rex.RedisClusterException as exc:
            if isinstance(exc, rex.SlotNotCoveredError):
                raise
            raise rex.ConnectionError(str(exc)) from exc

    def pubsub(
        self,
        node: ClusterNode | None = None,
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> ClusterPubSub:
        return _ClusterPubSub(self, node=node, host=host, port=port, **kwargs)


class _ClusterPubSub(ClusterPubSub):
    """Learns the cluster's layout before its first command: redis-py's picks the node of the
    channel's slot from it, and finds it empty in a client that has sent nothing yet."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self.connection is None and self.connection_pool is None:
            await self.cluster.initialize()
        return await super().execute_command(*args, **kwargs)


# -- Sentinel --------------------------------------------------------------------------------


class _SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to the master the Sentinels name; callers beyond ``max_connections`` wait
    for a free one, as with one server."""

    async def get_master_address(self) -> Any:
        try:
            return await super().get_master_address()  # type: ignore[no-untyped-call]
        except MasterNotFoundError as exc:  # redis-py's message lists every client's repr
            where = ", ".join(
                f"{s.connection_pool.connection_kwargs['host']}:"
                f"{s.connection_pool.connection_kwargs['port']}"
                for s in self.sentinel_manager.sentinels
            )
            raise MasterNotFoundError(
                f"no Sentinel of {where} names a live master for {self.service_name!r}"
            ) from exc


class _SentinelMaster(Redis):
    """The master's client; closing it closes its connections to the Sentinels too."""

    _watchers: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self._watchers is not None:
                await self._watchers.aclose()


class _Retry(Retry):
    """redis-py's retry of a failed command, less the failures no retry cures: a server whose
    TLS certificate was not accepted fails at once rather than after every backoff."""

    async def call_with_retry(
        self,
        do: Any,
        fail: Any,
        is_retryable: Any = None,
        with_failure_count: bool = False,
    ) -> Any:
        def retryable(exc: Exception) -> bool:
            if refused_certificate(exc):
                return False
            return is_retryable is None or bool(is_retryable(exc))

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def refused_certificate(exc: BaseException) -> bool:
    """True if ``exc`` (or an error it was raised from) is a failed TLS certificate check."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _sentinel_master(
    target: Target, max_connections: int, wait: float, retry: Retry, settings: dict[str, Any]
) -> Redis:
    tls = {k: v for k, v in target.options.items() if k.startswith("ssl")}
    if target.tls:
        tls["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(target.nodes),
        sentinel_kwargs={
            "socket_connect_timeout": settings["socket_connect_timeout"],
            "socket_timeout": settings["socket_timeout"],
            "retry": Retry(NoBackoff(), 0),  # one try each; the command's retries cover them
            **tls,
            **{k.removeprefix("sentinel_"): v for k, v in target.sentinel.items()},
        },
    )
    master = sentinel.master_for(
        cast(str, target.service),
        redis_class=_SentinelMaster,
        connection_pool_class=_SentinelPool,
        max_connections=max_connections,
        timeout=wait,
        retry=retry,
        retry_on_error=list(RETRY_ON),
        db=target.db,
        ssl=target.tls,
        **{**settings, **target.options},
    )
    master._watchers = sentinel
    return cast(Redis, master)
