"""The one client factory: a Redis URL in, the asyncio client that serves it out.

The URL is one of the three kinds :mod:`aioqueue.urls` reads (one server, a Redis Cluster,
a master found through Sentinel); its query options go to every connection and win over the
settings below.

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
from typing import Any, cast

from redis import exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff

from .urls import Target, parse

__all__ = ("CLUSTER_RETRY_ON", "RETRY_ON", "TRANSIENT", "client")

#: Errors that a retry may cure: a lost connection or Redis loading (BusyLoadingError is a
#: ConnectionError), and on a cluster a failover or a slot move under way (CLUSTERDOWN, TRYAGAIN,
#: a slot no node serves yet, too many redirects).
RETRY_ON: tuple[type[Exception], ...] = (rex.ConnectionError, rex.TimeoutError)
CLUSTER_RETRY_ON: tuple[type[Exception], ...] = (
    *RETRY_ON, rex.ClusterError, rex.TryAgainError, rex.SlotNotCoveredError,
)  # fmt: skip
#: A lost link, Redis loading, and on a cluster a failover or slot move under way.
TRANSIENT: tuple[type[Exception], ...] = (*CLUSTER_RETRY_ON, OSError)
_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
#: Connections per cluster node beyond ``max_connections`` (which bounds commands in flight):
#: room for a pub/sub subscription and a pipeline, which don't count as commands.
_NODE_HEADROOM = 2


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
