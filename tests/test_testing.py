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


def test_a_port_taken_since_it_was_picked_is_not_mistaken_for_ours() -> None:
    """Another server took the picked port before ours bound it (parallel tests pick ports
    so): the other server's PONG is not taken for ours, ours moves to a free port, and the
    URL reaches our process."""
    with RedisServer() as other:
        ours = RedisServer()
        ours.port = other.port
        with ours:
            assert ours.port != other.port
            with redis.Redis.from_url(ours.url) as r:
                assert r.info("server")["process_id"] == ours.process.pid  # type: ignore[union-attr]
