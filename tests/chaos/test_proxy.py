"""Tests of the fault-injection proxy against a private Redis server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from aioqueue.testing import RedisServer

from .harness import scaled
from .proxy import SCRIPTS, FaultProxy, ThreadedFaultProxy, peek_commands

#: How long a proxy's state change may take to show, on the reference machine (scaled to this
#: one's measured speed where it is used).
DEADLINE = 5.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", redis_server.port, seed=1) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def direct(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis(port=redis_server.port) as client:
        yield client


def client_for(port: int, **kwargs: float) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(port=port, retry=AsyncRetry(NoBackoff(), 0), **kwargs)


async def eventually(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    deadline = time.monotonic() + scaled(DEADLINE)
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await anyio.sleep(0.005)


def test_peek_commands_pipelined_inline_and_scripts() -> None:
    data = (
        b"*2\r\n$4\r\nincr\r\n$1\r\nk\r\n"
        b"PING\r\n"
        b"*3\r\n$7\r\nEVALSHA\r\n$6\r\nabc123\r\n$1\r\n0\r\n"
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\n*1\r\n$1\r\n"
    )
    assert peek_commands(data) == [(b"INCR",), (b"PING",), (b"EVALSHA", b"abc123"), (b"SET",)]


@pytest.mark.anyio
async def test_pass_through(proxy: FaultProxy) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    async with redis.asyncio.Redis.from_url(proxy.url) as client:
        assert await client.set("pt:key", b"value")
        assert await client.get("pt:key") == b"value"
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr("pt:n").incr("pt:n").get("pt:key")
            assert await pipe.execute() == [1, 2, b"value"]
        assert proxy.connections == 1
        assert proxy.active == 1
        assert proxy.bytes_c2s > 0
        assert proxy.bytes_s2c > 0
    await eventually(lambda: proxy.active == 0)
    assert proxy.resets == 0


@pytest.mark.anyio
async def test_latency_adds_delay(proxy: FaultProxy) -> None:
    async with client_for(proxy.port) as client:
        await client.ping()
        proxy.latency(60)
        start = time.monotonic()
        assert await client.ping()
        assert time.monotonic() - start >= 0.115  # 60 ms each way
        proxy.latency(60, direction="c2s")
        proxy.latency(0, direction="s2c")
        start = time.monotonic()
        assert await client.ping()
        assert time.monotonic() - start >= 0.055
        proxy.heal()
        assert await client.ping()


@pytest.mark.anyio
async def test_bandwidth_limits_throughput(proxy: FaultProxy, direct: redis.asyncio.Redis) -> None:
    value = b"x" * 20_000
    await direct.set("bw:key", value)
    async with client_for(proxy.port) as client:
        await client.ping()
        proxy.bandwidth(200_000, burst=1_000)
        start = time.monotonic()
        assert await client.get("bw:key") == value
        assert time.monotonic() - start >= (len(value) - 1_000) / 200_000 - 0.005


@pytest.mark.anyio
async def test_blackhole_times_out_and_heal_lets_a_new_connection_work(
    proxy: FaultProxy,
) -> None:
    async with client_for(proxy.port, socket_timeout=0.25) as client:
        assert await client.ping()
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            await client.ping()
        assert proxy.active == 1  # the server side stays open: a half-open peer
    async with client_for(proxy.port, socket_timeout=0.25) as late:
        with pytest.raises(redis.TimeoutError):
            await late.ping()  # accepted, but blackholed too
    assert proxy.connections == 2
    proxy.heal()
    await eventually(lambda: proxy.active == 0)
    async with client_for(proxy.port, socket_timeout=2) as fresh:
        assert await fresh.ping()
    assert proxy.connections == 3


@pytest.mark.anyio
async def test_reset_all_breaks_an_in_flight_command_and_the_client_reconnects(
    proxy: FaultProxy, direct: redis.asyncio.Redis
) -> None:
    async def blocked() -> bool:
        info = await direct.info("clients")
        return int(info["blocked_clients"]) >= 1

    async with client_for(proxy.port) as client:
        assert await client.ping()
        errors: list[Exception] = []

        async def pop() -> None:
            try:
                await client.blpop(["reset:list"], timeout=10)
            except redis.ConnectionError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pop)
            await eventually(blocked)
            assert proxy.reset_all() == 1
        assert len(errors) == 1
        assert proxy.resets == 1
        assert await client.ping()
        assert proxy.connections == 2


@pytest.mark.anyio
async def test_reset_all_sends_an_rst(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"PING\r\n")
        assert await reader.readline() == b"+PONG\r\n"
        assert proxy.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert proxy.active == 0


@pytest.mark.anyio
async def test_drop_reply_loses_the_reply_of_an_applied_incr(
    proxy: FaultProxy, direct: redis.asyncio.Redis
) -> None:
    await direct.set("drop:n", 0)
    async with client_for(proxy.port) as client:
        assert await client.get("drop:n") == b"0"
        proxy.drop_reply(1.0, match=b"INCR")
        assert await client.get("drop:n") == b"0"  # not a candidate
        with pytest.raises(redis.ConnectionError):
            await client.execute_command("INCR", "drop:n")  # client.incr() sends INCRBY
        assert await direct.get("drop:n") == b"1"
        assert proxy.dropped_replies == 1
        assert proxy.resets == 1
        assert await client.get("drop:n") == b"1"


@pytest.mark.anyio
async def test_drop_reply_matches_an_evalsha_by_sha_prefix(
    proxy: FaultProxy, direct: redis.asyncio.Redis
) -> None:
    sha = await direct.script_load("return redis.call('INCR', KEYS[1])")
    async with client_for(proxy.port) as client:
        proxy.drop_reply(1.0, match=sha[:8])
        assert await client.incr("sha:other") == 1
        with pytest.raises(redis.ConnectionError):
            await client.evalsha(sha, 1, "sha:n")
        assert await direct.get("sha:n") == b"1"
        assert proxy.dropped_replies == 1


@pytest.mark.anyio
async def test_drop_reply_matches_every_script_call(
    proxy: FaultProxy, direct: redis.asyncio.Redis
) -> None:
    sha = await direct.script_load("return redis.call('INCR', KEYS[1])")
    async with client_for(proxy.port) as client:
        proxy.drop_reply(1.0, match=SCRIPTS)
        assert await client.incr("any:other") == 1  # not a script: not a candidate
        with pytest.raises(redis.ConnectionError):
            await client.evalsha(sha, 1, "any:n")
        with pytest.raises(redis.ConnectionError):
            await client.eval("return redis.call('INCR', KEYS[1])", 1, "any:n")
        assert await direct.get("any:n") == b"2"
        assert proxy.dropped_replies == 2


@pytest.mark.anyio
async def test_drop_reply_with_probability_keeps_every_write(
    proxy: FaultProxy, direct: redis.asyncio.Redis
) -> None:
    proxy.drop_reply(0.5, match="incr")
    failures = 0
    async with client_for(proxy.port) as client:
        for _ in range(20):
            try:
                await client.execute_command("INCR", "prob:n")
            except redis.ConnectionError:
                failures += 1
    assert 0 < failures < 20
    assert failures == proxy.dropped_replies
    assert await direct.get("prob:n") == b"20"


@pytest.mark.anyio
async def test_slice_one_byte_still_yields_correct_replies(proxy: FaultProxy) -> None:
    value = b"a\r\nb$3\r\n*2" * 30
    proxy.slice(1)
    async with client_for(proxy.port) as client:
        assert await client.set("slice:key", value)
        assert await client.get("slice:key") == value
        await client.hset("slice:hash", mapping={"f1": "v1", "f2": value})
        assert await client.hgetall("slice:hash") == {b"f1": b"v1", b"f2": value}
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr("slice:n").get("slice:key").ping()
            assert await pipe.execute() == [1, value, True]
    assert proxy.bytes_s2c > 2 * len(value)


@pytest.mark.anyio
async def test_refuse_then_accept(proxy: FaultProxy) -> None:
    port = proxy.port
    async with client_for(port) as client:
        assert await client.ping()
        proxy.refuse()
        async with client_for(port, socket_connect_timeout=2) as refused:
            with pytest.raises(redis.ConnectionError):
                await refused.ping()
        assert await client.ping()  # open connections are unaffected
        proxy.heal()
        assert not proxy.listening  # heal does not reopen the listener
        await proxy.accept()
        assert proxy.port == port
        async with client_for(port, socket_connect_timeout=2) as fresh:
            assert await fresh.ping()
    assert proxy.connections == 2


def test_threaded_proxy_from_synchronous_code(redis_server: RedisServer) -> None:
    def sync_client(port: int, **kwargs: float) -> redis.Redis:
        return redis.Redis(port=port, retry=Retry(NoBackoff(), 0), **kwargs)

    def wait_until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + scaled(DEADLINE)
        while not condition():
            assert time.monotonic() < deadline, "condition not met before the deadline"
            time.sleep(0.005)

    direct = sync_client(redis_server.port)
    with ThreadedFaultProxy("127.0.0.1", redis_server.port, seed=3) as proxy, direct:
        assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
        with sync_client(proxy.port, socket_timeout=0.25) as client:
            assert client.ping()
            proxy.latency(40)
            start = time.monotonic()
            assert client.ping()
            assert time.monotonic() - start >= 0.075
            proxy.heal()

            proxy.drop_reply(1.0, match=b"INCR")
            with pytest.raises(redis.ConnectionError):
                client.execute_command("INCR", "threaded:n")
            assert direct.get("threaded:n") == b"1"
            assert proxy.dropped_replies == 1
            proxy.heal()

            proxy.blackhole()
            with pytest.raises(redis.TimeoutError):
                client.ping()
            proxy.heal()
            assert client.ping()

            assert proxy.reset_all() == 1
            wait_until(lambda: proxy.active == 0)
            assert client.ping()

            proxy.refuse()
            with sync_client(proxy.port, socket_connect_timeout=2) as refused:
                with pytest.raises(redis.ConnectionError):
                    refused.ping()
            proxy.accept()
            assert client.ping()
        assert proxy.resets == 2
        assert proxy.bytes_c2s > 0 and proxy.bytes_s2c > 0
    assert proxy.port != 0
