"""aioqueue.testing.RedisServer: a private server that tests can kill and restart."""

from __future__ import annotations

import redis

from aioqueue.testing import RedisServer


def test_restart_with_aof_keeps_acknowledged_writes() -> None:
    """With appendonly on, a SIGKILLed server restarts on the same port with its data."""
    with RedisServer(appendonly=True, appendfsync="always") as server:
        r = redis.Redis.from_url(server.url)
        r.set("k", "v")
        server.kill()
        assert not server.ping()
        server.start()
        assert r.get("k") == b"v"
        r.close()


def test_unix_socket_server() -> None:
    """A server can listen on a unix socket instead of TCP."""
    with RedisServer(unix_socket=True) as server:
        assert server.url.startswith("unix://")
        with redis.Redis.from_url(server.url) as r:
            assert r.ping()
    assert not server.dir.exists()
