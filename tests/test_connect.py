"""Redis URLs of every kind: what they parse to, the client each makes, and the errors for bad
ones (no server needed; the cluster and Sentinel tests of the chaos suite use real ones)."""

from __future__ import annotations

import socket

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from aioqueue import InvalidOptions, Queue, RedisUnavailable, connect, urls
from aioqueue.urls import SCHEMES, check_url


def test_schemes_name_every_kind() -> None:
    """The URL check lists the cluster and Sentinel schemes beside the single-server ones."""
    for scheme in ("redis+cluster://", "rediss+cluster://", "redis+sentinel://",
                   "rediss+sentinel://"):  # fmt: skip
        assert scheme in SCHEMES


def test_single_server_urls_parse_as_before() -> None:
    """redis://, rediss:// and unix:// stay redis-py's own format."""
    assert urls.parse("redis://localhost:6379/2").kind == "server"
    assert urls.parse("unix:///tmp/redis.sock").kind == "server"
    assert check_url("rediss://:pw@host:6380/0") == "rediss://:pw@host:6380/0"


def test_cluster_url() -> None:
    """Nodes, credentials, TLS and query options of a cluster URL; the port defaults to 6379."""
    t = urls.parse("rediss+cluster://me:s%40cret@a:7000,b,[::1]:7002?client_name=w1")
    assert t.kind == "cluster" and t.tls
    assert t.nodes == (("a", 7000), ("b", 6379), ("::1", 7002))
    assert t.options["username"] == "me" and t.options["password"] == "s@cret"
    assert t.options["client_name"] == "w1"
    assert t.db == 0 and t.service is None
    assert urls.parse("redis+cluster://a:7000/0").nodes == (("a", 7000),)


def test_sentinel_url() -> None:
    """Sentinels, the service, the db, the master's and the Sentinels' own credentials; the
    port defaults to 26379."""
    url = "redis+sentinel://:pw@s1:26379,s2/mymaster/3?sentinel_password=spw"
    t = urls.parse(url)
    assert t.kind == "sentinel" and not t.tls
    assert t.nodes == (("s1", 26379), ("s2", 26379))
    assert t.service == "mymaster" and t.db == 3
    assert t.options["password"] == "pw"
    assert t.sentinel == {"sentinel_password": "spw"}
    assert "sentinel_password" not in t.options
    assert urls.parse("rediss+sentinel://s1/m").tls


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "is not a Redis URL: use one of the schemes redis://"),
        ("redis+cluster://", "is invalid: name at least one node as host:port, as in "
                             "redis+cluster://host1:6379,host2:6379"),
        ("redis+cluster://a:7000,,b:7001", "is invalid: the list of hosts has an empty entry"),
        ("redis+cluster://a:70000", "is invalid: 'a:70000' has no valid port (1-65535)"),
        ("redis+cluster://a:x", "is invalid: 'a:x' has no valid port"),
        ("redis+cluster://:7000", "is invalid: ':7000' has no host"),
        ("redis+cluster://::1:7000", "write an IPv6 address in brackets, as in [::1]:6379"),
        ("redis+cluster://[::1:7000", "is not [address]:port"),
        ("redis+cluster://a:7000/1", "is invalid: a cluster has only db 0: name no db"),
        ("redis+cluster://a:7000?db=2", "a cluster has only db 0"),
        ("redis+cluster://a:7000?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("redis+sentinel://s1:26379", "is invalid: name the Sentinel service after the hosts, "
                                      "as in redis+sentinel://host1:26379,host2:26379/mymaster"),
        ("redis+sentinel://s1:26379/", "name the Sentinel service after the hosts"),
        ("redis+sentinel:///mymaster", "name at least one Sentinel as host:port"),
        ("redis+sentinel://s1/m/x", "only a db number may follow the service name, got '/m/x'"),
        ("redis+sentinel://s1/m/1/2", "only a db number may follow the service name"),
    ],
)  # fmt: skip
def test_malformed_urls_say_what_is_wrong(url: str, message: str) -> None:
    """A malformed URL raises InvalidOptions naming it and the fault, before any connection."""
    with pytest.raises(InvalidOptions) as info:
        Queue("q", redis_url=url)
    assert message in str(info.value)
    assert f"redis_url {url!r}" in str(info.value)


def test_a_child_checks_the_scheme_at_once_and_the_rest_at_its_first_client() -> None:
    """Within schemes_only (how a worker's children import the task module), a queue checks
    its URL's scheme only; the first client it makes checks the rest, with the same error."""
    with urls.schemes_only():
        with pytest.raises(InvalidOptions, match="is not a Redis URL"):
            Queue("q", redis_url="http://localhost:6379")
        q = Queue("q", redis_url="redis+cluster://a:70000")
    with pytest.raises(InvalidOptions, match="'a:70000' has no valid port"):
        q.redis  # noqa: B018 - makes the client


def test_password_is_hidden_in_errors() -> None:
    """The URL an error names never shows the password."""
    with pytest.raises(InvalidOptions) as info:
        check_url("redis+sentinel://user:hunter2@s1:26379")
    assert "hunter2" not in str(info.value) and "user:***@" in str(info.value)


@pytest.mark.anyio
async def test_each_kind_makes_its_client() -> None:
    """A cluster URL makes a RedisCluster bounded by max_connections, a Sentinel URL a client
    of the service's master; neither connects before its first command."""
    made = []
    for url in ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "redis+sentinel://s1/m/2"):
        q = Queue("q", redis_url=url, max_connections=7)
        made.append(q._make_client(socket_timeout=3.0, retries=0))
    cluster, sentinel = made
    try:
        assert isinstance(cluster, RedisCluster)
        assert [n.name for n in cluster.startup_nodes] == ["127.0.0.1:7000", "127.0.0.1:7001"]
        assert all(n.max_connections >= 7 for n in cluster.startup_nodes)
        assert isinstance(sentinel, Redis)
        pool = sentinel.connection_pool
        assert pool.service_name == "m"
        assert pool.max_connections == 7
        assert pool.connection_kwargs["db"] == 2
    finally:
        for c in made:
            await c.aclose()


@pytest.mark.anyio
async def test_a_cluster_url_to_a_plain_server_says_so(redis_url: str) -> None:
    """A cluster URL that names a server without cluster mode raises RedisUnavailable saying
    so, and leaves nothing open."""
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    q = Queue("q", redis_url=f"redis+cluster://127.0.0.1:{port}", redis_retries=0)
    with pytest.raises(RedisUnavailable, match="Cluster mode is not enabled on this node"):
        await q.__aenter__()
    assert q._redis is None


@pytest.mark.anyio
async def test_no_sentinel_answering_names_them_and_the_service() -> None:
    """With no Sentinel answering, RedisUnavailable names the Sentinels asked and the service."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = Queue("q", redis_url=f"redis+sentinel://127.0.0.1:{port}/mymaster", redis_retries=0)
    with pytest.raises(RedisUnavailable) as info:
        await q.__aenter__()
    assert f"no Sentinel of 127.0.0.1:{port} names a live master for 'mymaster'" in str(info.value)


@pytest.mark.anyio
async def test_a_refused_certificate_is_not_retried() -> None:
    """A lost link is retried; a server certificate that was not accepted is not (no retry
    cures it): the error comes at once instead of after every backoff."""
    import ssl

    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as LinkError

    retry = connect._Retry(NoBackoff(), 5)
    calls = 0

    async def fail(exc: Exception) -> None:
        pass

    async def lost() -> None:
        nonlocal calls
        calls += 1
        raise LinkError("connection reset")

    async def refused() -> None:
        nonlocal calls
        calls += 1
        try:
            raise ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] verify failed")
        except ssl.SSLError as exc:
            raise LinkError("Error connecting") from exc

    with pytest.raises(LinkError):
        await retry.call_with_retry(lost, fail)
    assert calls == 6
    calls = 0
    with pytest.raises(LinkError):
        await retry.call_with_retry(refused, fail)
    assert calls == 1
