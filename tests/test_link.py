"""The worker's held connection for its hot path, against a real Redis: commands packed once,
a lost link re-sent once on a new connection, a cancelled call never leaves its reply behind, a
script Redis forgot loaded again."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import redis
from redis import exceptions as rex

from aioqueue import Queue
from aioqueue._link import Link, Messages, direct, pack
from aioqueue.scripts import Receipt
from tests import tasks
from tests._async import eventually

pytestmark = pytest.mark.anyio


async def test_replies_in_order_and_error_replies_keep_the_link(queue: Queue) -> None:
    link = Link.of(queue.redis)
    assert link is not None
    assert await link.call(pack("SET", "k", 1.5)) == b"OK"
    assert await link.call(pack("GET", "k")) == b"1.5"
    with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
        await link.call(pack("LPUSH", "k", "x"))
    assert await link.call(pack("INCRBYFLOAT", "k", 1)) == b"2.5"
    await link.aclose()


async def test_a_killed_connection_is_replaced_and_the_command_sent_again(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    link = Link.of(queue.redis)
    assert link is not None
    await link.call(pack("CLIENT", "SETNAME", "held"))
    sync_redis.client_kill_filter(_type="normal", skipme=True)
    assert await link.call(pack("INCR", "n")) == 1  # on a new connection, once
    assert await link.call(pack("GET", "n")) == b"1"
    await link.aclose()


async def test_a_cancelled_call_drops_its_connection(queue: Queue) -> None:
    """A BLPOP cut short leaves no reply to be read as the next call's answer."""
    link = Link.of(queue.redis)
    assert link is not None
    with anyio.move_on_after(0.2):
        await link.call(pack("BLPOP", "wake", 5))
    await queue.redis.rpush("wake", "late")  # would have answered the BLPOP
    assert await link.call(pack("PING")) == b"PONG"
    assert await queue.redis.lpop("wake") == b"late"  # nobody took it
    await link.aclose()


async def test_a_reply_later_than_the_socket_timeout_fails_the_call(queue: Queue) -> None:
    """The held connection's own reads keep the client's ``socket_timeout``: a reply that does
    not come in time fails the call (after one more try on a new connection), as redis-py's
    would, and the link goes on with a new connection."""
    client = queue._make_client(socket_timeout=0.2, retries=0)
    link = Link.of(client)
    assert link is not None
    assert await link.call(pack("PING")) == b"PONG"
    assert link._direct  # hiredis reads the stream: the path under test
    with pytest.raises(rex.TimeoutError, match="Timeout reading from"):
        await link.call(pack("BLPOP", "never", 2))
    assert await link.call(pack("PING")) == b"PONG"
    await link.aclose()
    await client.aclose()


async def test_a_slow_reply_after_quick_ones_still_times_out(queue: Queue) -> None:
    """A link's calls share one timer, armed for an earlier call's deadline: a slow call after
    quick ones still fails at its own deadline (the timer re-arms for it), not never."""
    client = queue._make_client(socket_timeout=0.3, retries=0)
    link = Link.of(client)
    assert link is not None
    start = anyio.current_time()
    while anyio.current_time() - start < 0.25:  # the first call armed the timer for 0.3 s
        assert await link.call(pack("PING")) == b"PONG"
        await anyio.sleep(0.01)
    # the timer fires while this call is in flight, before its deadline, and re-arms for it
    with pytest.raises(rex.TimeoutError, match="Timeout reading from"):
        await link.call(pack("BLPOP", "never", 2))  # without the timeout: None after 2 s
    assert await link.call(pack("PING")) == b"PONG"
    await link.aclose()
    await client.aclose()


async def test_a_claim_behind_a_blocking_pop_runs_when_the_pop_returns(queue: Queue) -> None:
    """The fetch loop's wait and its next claim go in one write: Redis runs the claim the
    moment the pop takes a wake-up token, so the claim leases a job submitted during the wait,
    and one reply brings it."""
    link = Link.of(queue.redis)
    assert link is not None
    await link.call(pack("PING"))
    r = Receipt(queue.keys.receipt("wait"), "1", 60_000)
    blpop = pack("BLPOP", queue.keys.wake, 5)
    claim = asyncio.ensure_future(queue.scripts.claim(1, 10_000, "w", r, link=link, before=blpop))

    async def blocked() -> bool:
        return int((await queue.redis.info("clients"))["blocked_clients"]) == 1

    await eventually(blocked, what="the pop to block")
    job = await queue.submit(tasks.noop)  # its wake-up token ends the pop
    _, got = await asyncio.wait_for(claim, 5)
    assert [j.id for j in got.jobs] == [job.id]
    await link.aclose()


async def test_an_error_reply_to_the_command_sent_before_keeps_the_link_in_step(
    queue: Queue,
) -> None:
    link = Link.of(queue.redis)
    assert link is not None
    await link.call(pack("SET", "k", "v"))
    with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
        await link.call(pack("GET", "k"), before=pack("LPUSH", "k", "x"))
    assert await link.call(pack("GET", "k")) == b"v"  # the GET's own reply was read and dropped
    await link.aclose()


async def test_scripts_on_a_link_load_themselves_again(queue: Queue) -> None:
    """After SCRIPT FLUSH the claim on a link loads its script and claims."""
    job = await queue.submit(tasks.noop)
    link = Link.of(queue.redis)
    assert link is not None
    await queue.redis.script_flush()
    r = Receipt(queue.keys.receipt("link"), "1", 60_000)
    _, claim = await queue.scripts.claim(1, 10_000, "w", r, link=link)
    assert [j.id for j in claim.jobs] == [job.id]
    await link.aclose()


async def test_a_submit_whose_link_was_cut_goes_in_once(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """A producer's submits go over held links; with every connection killed between two
    submits, the next is sent again on a new one and the job exists once."""
    await queue.submit(tasks.noop)
    sync_redis.client_kill_filter(_type="normal", skipme=True)
    job = await queue.submit(tasks.add, 1, 2)
    assert job.created
    assert await queue.redis.hlen(queue.keys.jobs) == 2
    assert await queue.redis.zcard(queue.keys.pending) == 2


async def test_a_subscription_read_returns_messages_then_none_after_silence(
    queue: Queue,
) -> None:
    """Reads of a subscription share one timer too: messages that keep coming are all read,
    silence ends a read with None at its own deadline, and a cancellation from outside still
    cancels."""
    pubsub = queue.redis.pubsub()
    await pubsub.subscribe("news")
    assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
    assert pubsub.connection is not None and direct(pubsub.connection)
    messages = Messages(pubsub.connection)
    start = anyio.current_time()
    n = 0
    while anyio.current_time() - start < 0.25:  # the first read armed the timer for 0.3 s
        await queue.redis.publish("news", str(n))
        assert await messages.next(0.3) == [b"message", b"news", str(n).encode()]
        n += 1
    assert await messages.next(0.3) is None  # silence: past the re-armed deadline
    with anyio.move_on_after(0.05) as scope:
        await messages.next(10)
    assert scope.cancelled_caught
    await pubsub.aclose()
