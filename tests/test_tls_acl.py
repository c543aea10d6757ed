"""TLS and ACL: a producer and real workers over a verified TLS link, and as ACL users each
limited to one queue's keys and channel.

The ACL rule a queue's producers and workers need is :func:`queue_rule`. Its commands are those
aioqueue sends itself and those its scripts call (``aioqueue/lua/*.lua``: Redis checks the
commands, keys and channels a script uses against the caller's ACL); a test below fails when a
script starts calling a command the rule lacks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest
import redis
import redis.asyncio
from redis import exceptions as rex

import aioqueue
from aioqueue import Queue
from aioqueue.admin.cli import main as admin_main
from aioqueue.keys import REGISTRY, Keys
from aioqueue.testing import RedisServer
from tests import tasks
from tests._async import eventually
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.anyio

WAIT = 30.0  # bound on any wait for a worker or a result (the tests take a second or two)

# -- TLS ---------------------------------------------------------------------------------------


class Certs:
    """A throw-away CA with a server certificate (SAN ``localhost`` and ``127.0.0.1``) and a
    client certificate, made with the ``openssl`` command in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / "ca.crt"
        self._openssl(
            "req", "-x509", *self._ec_key("ca.key"), "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=aioqueue test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        self._leaf("server", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self._leaf("client", "clientAuth")

    @staticmethod
    def _ec_key(name: str) -> list[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", name]  # fmt: skip

    def _openssl(self, *args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True)
        assert done.returncode == 0, f"openssl {args[0]} failed: {done.stderr}"

    def _leaf(self, name: str, usage: str, extra: str = "") -> None:
        ext = self.dir / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\n"
            f"authorityKeyIdentifier=keyid\n{extra}"
        )
        self._openssl("req", "-new", *self._ec_key(f"{name}.key"), "-out", f"{name}.csr",
                      "-subj", f"/CN=aioqueue test {name}")  # fmt: skip
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "1",
                      "-out", f"{name}.crt", "-extfile", ext.name)  # fmt: skip

    def url(self, port: int, host: str = "localhost", *, trust: bool = True) -> str:
        """A ``rediss://`` URL that verifies the server (against this CA if ``trust``, else
        against the system's CAs only) and shows the client certificate."""
        query = {"ssl_cert_reqs": "required", "ssl_check_hostname": "true"}
        if trust:
            query["ssl_ca_certs"] = str(self.ca)
        query |= {"ssl_certfile": str(self.dir / "client.crt"),
                  "ssl_keyfile": str(self.dir / "client.key")}  # fmt: skip
        return f"rediss://{host}:{port}/0?{urlencode(query)}"

    def context(self) -> ssl.SSLContext:
        """A client context that trusts this CA and shows the client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(self.dir / "client.crt", self.dir / "client.key")
        return ctx


class TlsRedisServer(RedisServer):
    """A private redis-server that speaks TLS only (``--port 0``): the server certificate of
    ``certs``, and clients must show a certificate from the same CA."""

    def __init__(self, certs: Certs) -> None:
        self.certs = certs
        super().__init__()

    def _command(self) -> list[str]:
        d = self.certs.dir
        return [*super()._command(), "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
                "--tls-ca-cert-file", str(self.certs.ca), "--tls-auth-clients", "yes"]  # fmt: skip

    @property
    def url(self) -> str:
        return self.certs.url(self.port)

    def ping(self) -> bool:
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                self.certs.context().wrap_socket(raw, server_hostname="localhost") as sock,
            ):
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("the openssl command is needed to make test certificates")
    return Certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(certs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_admin(tls_server: TlsRedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(tls_server.url) as r:
        r.flushall()
        yield r


@contextlib.asynccontextmanager
async def running_worker(
    url: str, log: Path, queue: str = "tests", admin: redis.Redis | None = None
) -> AsyncIterator[WorkerProcess]:
    """A real worker of tests/tasks.py's tasks on ``queue``, as the user of ``url``, until the
    block ends; ready once its heartbeat is in Redis, read through ``admin`` if given (the URL's
    user may read no queue but its own)."""
    w = WorkerProcess(url, log, processes=1, env={"AIOQUEUE_TEST_QUEUE": queue}).start()
    try:
        if admin is None:
            await w.ready()
        else:
            key = Keys(queue).workers

            def up() -> bool:
                assert w.proc is not None and w.proc.poll() is None, w.output()[-2000:]
                return bool(admin.zcard(key))

            await eventually(up, WAIT, f"worker of {queue!r} up; log: {w.output()[-500:]}")
        yield w
    finally:
        w.stop()


async def test_tls_producer_and_worker(
    tls_server: TlsRedisServer, tls_admin: redis.Redis, certs: Certs, tmp_path: Path
) -> None:
    """Over TLS only (no plain port; the server's certificate checked against the test CA, its
    name against the SAN, the client's certificate checked by Redis), a real producer and a real
    worker run jobs, and results arrive over pub/sub."""
    assert tls_admin.config_get("port") == {"port": "0"}
    worker_url = certs.url(tls_server.port, "127.0.0.1")  # the IP entry of the SAN
    async with running_worker(worker_url, tmp_path / "worker.log"):
        saved, tasks.queue.redis_url = tasks.queue.redis_url, tls_server.url  # SAN localhost
        try:
            async with tasks.queue as q:
                jobs = await q.submit_many(tasks.add, [(i, i) for i in range(20)])
                with anyio.fail_after(WAIT):
                    values = [await job.result() for job in jobs]
                assert values == [2 * i for i in range(20)]
                with pytest.raises(aioqueue.JobFailed, match="ValueError: over TLS"):
                    await (await q.submit(tasks.fail, "over TLS")).result(timeout=WAIT)
                assert q._results.mode == "subscribed"
        finally:
            tasks.queue.redis_url = saved
    clients = tls_admin.client_list()
    assert clients and all(c["laddr"].endswith(f":{tls_server.port}") for c in clients)


async def test_tls_untrusted_server_is_a_clear_error(
    tls_server: TlsRedisServer, tls_admin: redis.Redis, certs: Certs
) -> None:
    """A client that does not trust the server's CA gets RedisUnavailable naming the
    certificate error (at once: no retry cures it), and nothing is written."""
    before = tls_admin.dbsize()
    q = Queue("untrusted", certs.url(tls_server.port, trust=False))
    try:
        with anyio.fail_after(WAIT), pytest.raises(aioqueue.RedisUnavailable) as info:
            await q.submit("tests.tasks.add", 1, 2)
        text = str(info.value)
        assert "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text, text
        assert "rediss://localhost" in text and "TLS certificate was not accepted" in text, text
        with pytest.raises(aioqueue.RedisUnavailable, match="certificate verify failed"):
            async with q:
                pass
    finally:
        await q.aclose()
    assert tls_admin.dbsize() == before == 0


# -- ACL ---------------------------------------------------------------------------------------

#: Commands a producer or worker sends itself: the connection set-up redis-py 8 makes (``HELLO 3
#: AUTH``, ``PING``), scripts (run by SHA, loaded again after a restart or ``SCRIPT FLUSH``),
#: the worker's blocking wait, periodic schedules and goodbye, the producer's reads, and the
#: result subscription.
TOP_LEVEL = (
    "+hello +auth +ping +evalsha +script|load +blpop +time +hgetall +hset +hdel +zrem +exists "
    "+hmget +mget +hscan +subscribe +unsubscribe"
)

#: Commands the scripts call (``aioqueue/lua/*.lua``): Redis checks each against the caller's ACL.
IN_SCRIPTS = (
    "+del +exists +get +hdel +hexists +hget +hgetall +hincrby +hlen +hset +llen +lpop +lrem "
    "+persist +pexpire +publish +rpush +sadd +set +smembers +time +zadd +zcard +zcount "
    "+zpopmin +zrange +zrangebyscore +zrem +zremrangebyscore +zscore"
)

#: Connection set-up commands redis-py sends that only newer servers know (so only named where
#: the server knows them): without them each new connection leaves a harmless ACL LOG entry.
NEWER = ("client|setinfo", "client|maint_notifications")


def queue_rule(queue: str, *, channel: bool = True, registry: bool = True) -> list[str]:
    """The ACL rule (``ACL SETUSER <user> on >PASSWORD <rule...>``) for a user that runs the
    producers and workers of ``queue`` and nothing else, on Redis 7.0 (for ``orders``)::

        resetkeys ~aioqueue:{orders}:* resetchannels &aioqueue:{orders}:done
        -@all +hello +auth +ping +evalsha +script|load +blpop +mget +hmget +hscan +subscribe
        +unsubscribe +del +exists +get +hdel +hexists +hget +hgetall +hincrby +hlen +hset +llen
        +lpop +lrem +persist +pexpire +publish +rpush +sadd +set +smembers +time +zadd +zcard
        +zcount +zpopmin +zrange +zrangebyscore +zrem +zremrangebyscore +zscore
        "(%W~aioqueue:queues +sadd)"

    Key patterns match ``{`` and ``}`` literally. The selector at the end lets the user add its
    queue to the registry of queues (``aioqueue:queues``, where ``aioqueue info`` finds queues)
    with ``SADD`` only: it can neither read the registry (other queues' names) nor remove from
    it. Without it (``registry=False``) nothing breaks: each producer and worker process is
    refused one ``SADD`` (an ACL LOG entry, a debug log line) and ``aioqueue info`` needs the
    queue named. ``channel=False`` leaves out the channel, for a producer that then checks its
    waited-for jobs on an interval (see aioqueue/results.py); a worker needs the channel, as
    its scripts publish finished ids. Redis 7.2 and newer also want ``+client|setinfo``.
    """
    rule = ["resetkeys", f"~aioqueue:{{{queue}}}:*", "resetchannels"]
    if channel:
        rule.append(f"&{Keys(queue).done_channel}")
    rule += ["-@all", *TOP_LEVEL.split(), *IN_SCRIPTS.split()]
    if registry:
        rule.append(f"(%W~{REGISTRY} +sadd)")
    return rule


def _known(r: redis.Redis, subcommand: str) -> bool:
    """Whether the server knows the (sub)command: an ACL rule may name only those."""
    try:
        r.acl_setuser("aioqueue-probe", commands=[f"+{subcommand}"])
    except rex.ResponseError:
        return False
    finally:
        r.acl_deluser("aioqueue-probe")
    return True


def set_user(admin: redis.Redis, user: str, rule: list[str]) -> str:
    """Create (or reset) ``user`` with ``rule``; returns its password."""
    newer = [f"+{c}" for c in NEWER if _known(admin, c)]
    admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", user, "reset", "on", f">{user}-pw", *rule, *newer
    )
    return f"{user}-pw"


def acl_denials(admin: redis.Redis) -> set[tuple[str, ...]]:
    """(user, reason, context, object) of every ACL LOG entry."""
    log: list[dict[str, Any]] = admin.acl_log()
    return {tuple(str(e[k]) for k in ("username", "reason", "context", "object")) for e in log}


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    # DEBUG on for local clients, so that it is the ACL that refuses it
    with RedisServer(extra_args=("--enable-debug-command", "local")) as server:
        yield server


@pytest.fixture
def acl_admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    """The server's default user (every right), with a clean slate: no data, no ACL LOG."""
    with redis.Redis.from_url(acl_server.url, decode_responses=True) as r:
        r.flushall()
        r.acl_log_reset()
        yield r


def user_url(server: RedisServer, admin: redis.Redis, user: str, rule: list[str]) -> str:
    password = set_user(admin, user, rule)
    return server.url.replace("redis://", f"redis://{user}:{password}@", 1)


async def run_admin(url: str, *args: str) -> tuple[int, str]:
    """``aioqueue ARGS --redis-url URL`` in a thread; its exit code and its output."""

    def run() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                admin_main([*args, "--redis-url", url])
            except SystemExit as exc:
                return (exc.code if isinstance(exc.code, int) else 1), out.getvalue()
        return 0, out.getvalue()  # pragma: no cover - main always exits

    return await anyio.to_thread.run_sync(run)


async def test_rule_covers_every_command_the_scripts_call() -> None:
    """Every command a script calls is in the rule: a script that starts calling another one
    fails this test rather than every restricted user's workers."""
    root = Path(aioqueue.__file__).parent / "lua"
    called = set()
    for path in root.glob("*.lua"):
        for name in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", path.read_text()):
            called.add(name.lower())
    granted = {c[1:] for c in IN_SCRIPTS.split()}
    assert called and called <= granted, f"not in the rule: {sorted(called - granted)}"


async def test_restricted_user_runs_producer_and_worker(
    acl_server: RedisServer, acl_admin: redis.Redis, tmp_path: Path
) -> None:
    """As a user limited to queue ``orders``'s keys, channel and the rule's commands, a producer
    and a worker run jobs, retries, dead letters, cancel, requeue, purge, info, pause and resume,
    and ``aioqueue info``; the ACL LOG holds only the worker's probe of ``CONFIG GET
    maxmemory-policy`` (a warning it can't give, as expected)."""
    url = user_url(acl_server, acl_admin, "orders", queue_rule("orders"))
    add, flaky, fail = "tests.tasks.add", "tests.tasks.flaky", "tests.tasks.fail_retried"
    async with (
        running_worker(url, tmp_path / "w.log", "orders", acl_admin) as w,
        Queue("orders", url) as q,
    ):
        with anyio.fail_after(WAIT):
            jobs = await q.submit_many(add, [(i, 1) for i in range(10)])
            assert [await j.result() for j in jobs] == list(range(1, 11))
            assert q._results.mode == "subscribed"
            assert await (await q.submit(flaky, str(tmp_path / "flaky"), 2)).result() == 3
            dead = await q.submit(fail, "no luck")
            with pytest.raises(aioqueue.JobFailed, match="after 3 attempts: RuntimeError"):
                await dead.result()
            later = await q.options(delay=600).submit(add, 1, 1)
            assert await q.cancel([later.id]) == [True]
            with pytest.raises(aioqueue.JobCancelled):
                await later.result()
            [letter] = await q.dead_letters()
            assert letter.id == dead.id and len(letter.errors) == 3
            await q.pause()
            assert await q.paused() and (await q.info()).paused
            held = await q.submit(add, 2, 2)
            await q.resume()
            assert await held.result() == 4
            assert await q.requeue_dead([dead.id]) == 1
            with pytest.raises(aioqueue.JobFailed):
                await dead.result()
            assert await q.purge_dead([dead.id]) == 1
            info = await q.info()
            assert (info.workers, info.dead, info.pending) == (1, 0, 0)
            assert info.counters["completed"] == 12
        code, out = await run_admin(url, "info", "orders", "--json")
        assert code == 0, out
        [shown] = json.loads(out)["queues"]
        assert shown["counters"]["completed"] == 12 and len(shown["workers"]) == 1
        assert "RedisRefused" not in w.output() and "NOPERM" not in w.output()
    assert acl_admin.sismember(REGISTRY, "orders")
    assert acl_denials(acl_admin) == {("orders", "command", "toplevel", "config|get")}


async def test_admin_commands_as_restricted_user_fail_clearly(
    acl_server: RedisServer, acl_admin: redis.Redis
) -> None:
    """``aioqueue info`` with no queue named says the registry can't be read by this user and
    to name the queue; ``aioqueue doctor QUEUE`` checks what it can (INFO is refused) and finds
    the user's rights complete. ``pause``/``resume`` of a named queue work, and ``info``
    and ``submit`` as well without the registry rule."""
    url = user_url(acl_server, acl_admin, "orders", queue_rule("orders"))
    code, out = await run_admin(url, "info")
    assert code == 1 and "can't read the registry of queues" in out and "name the" in out, out
    code, out = await run_admin(url, "doctor", "orders", "--json")
    found = {f["check"]: f for f in json.loads(out)["findings"]}
    assert found["server"]["level"] == "unknown" and "INFO refused" in found["server"]["detail"]
    assert found["acl"]["level"] == "ok", found["acl"]  # the rule is all the queue needs
    for args in (["pause", "orders"], ["resume", "orders"]):
        code, out = await run_admin(url, *args)
        assert code == 0 and "Traceback" not in out, out
    bare = user_url(acl_server, acl_admin, "orders", queue_rule("orders", registry=False))
    for args in (["info", "orders"], ["submit", "orders", "tests.tasks.noop"]):
        code, out = await run_admin(bare, *args)
        assert code == 0 and "Traceback" not in out, (args, out)


#: Commands with a reach beyond one queue's keys: listing, scanning, flushing, reconfiguring,
#: clients, scripts of others, other databases, the ACL.
SERVER_WIDE = [
    ("KEYS", "*"), ("SCAN", "0"), ("RANDOMKEY",), ("FLUSHALL",), ("FLUSHDB",),
    ("CONFIG", "GET", "*"), ("CONFIG", "SET", "maxmemory", "1"), ("DEBUG", "SLEEP", "0"),
    ("INFO",), ("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", "1"), ("SCRIPT", "FLUSH"),
    ("ACL", "WHOAMI"), ("SWAPDB", "0", "1"), ("OBJECT", "ENCODING", "aioqueue:{orders}:x"),
]  # fmt: skip


@pytest.mark.parametrize("command", SERVER_WIDE, ids=lambda c: " ".join(c[:2]))
def test_restricted_user_cannot_run_server_wide_commands(
    acl_server: RedisServer, acl_admin: redis.Redis, command: tuple[str, ...]
) -> None:
    """The queue's user can't list, scan, flush or reconfigure the server, see its clients or
    drop its scripts: NOPERM."""
    url = user_url(acl_server, acl_admin, "orders", queue_rule("orders"))
    with redis.Redis.from_url(url) as r, pytest.raises(rex.NoPermissionError):
        r.execute_command(*command)


async def test_queues_of_two_users_are_isolated(
    acl_server: RedisServer, acl_admin: redis.Redis, tmp_path: Path
) -> None:
    """The ``billing`` user is refused every read, write, script and subscription that touches
    ``orders``'s keys or channel, and the registry's contents; a script loaded by it can't reach
    them either; its own worker runs its jobs and leaves ``orders``'s waiting."""
    orders_url = user_url(acl_server, acl_admin, "orders", queue_rule("orders"))
    billing_url = user_url(acl_server, acl_admin, "billing", queue_rule("billing"))
    async with Queue("orders", orders_url) as orders:
        waiting = await orders.submit("tests.tasks.add", 1, 2)
        status_sha = orders.scripts.sha("status")
    ok = Keys("orders")
    status_keys = [ok.leases, ok.pending, ok.scheduled, ok.dead, ok.result(waiting.id), ok.jobs]
    with redis.Redis.from_url(billing_url) as r:
        refused: list[Callable[[], object]] = [
            lambda: r.hget(ok.jobs, waiting.id),
            lambda: r.zrange(ok.pending, 0, -1),
            lambda: r.get(ok.result(waiting.id)),
            lambda: r.delete(ok.pending),
            lambda: r.publish(ok.done_channel, waiting.id),
            lambda: r.smembers(REGISTRY),
            lambda: r.srem(REGISTRY, "orders"),
            lambda: r.delete(REGISTRY),
            lambda: r.evalsha(status_sha, len(status_keys), *status_keys, waiting.id),
            # a script of its own, naming the key undeclared: refused at the call
            lambda: r.evalsha(r.script_load(f"return redis.call('HGET', '{ok.jobs}', 'x')"), 0),
            lambda: r.evalsha(r.script_load("return redis.call('KEYS', '*')"), 0),
        ]
        for call in refused:
            # NOPERM, or (for what a script calls) "The user executing the script can't ..."
            with pytest.raises(rex.ResponseError, match=r"^(?!NOSCRIPT).*(permissions|can't)"):
                call()
        with r.pubsub() as ps, pytest.raises(rex.NoPermissionError):
            ps.subscribe(ok.done_channel)
            ps.get_message(timeout=WAIT)
    async with (
        running_worker(billing_url, tmp_path / "w.log", "billing", acl_admin),
        Queue("billing", billing_url) as billing,
    ):
        jobs = await billing.submit_many("tests.tasks.add", [(i, 100) for i in range(5)])
        with anyio.fail_after(WAIT):
            assert [await j.result() for j in jobs] == [100, 101, 102, 103, 104]
    assert acl_admin.zscore(ok.pending, waiting.id) is not None  # untouched by billing
    assert acl_admin.smembers(REGISTRY) == {"orders", "billing"}
    assert {user for user, *_ in acl_denials(acl_admin)} == {"billing"}


async def test_producer_without_channel_or_registry_checks_jobs_quietly(
    acl_server: RedisServer,
    acl_admin: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer user with the queue's keys but neither its channel nor the registry gets its
    results by checking on an interval, with one warning for the refused subscription and none
    for the refused registration, however many submits it makes."""
    caplog.set_level(logging.DEBUG, logger="aioqueue")
    worker_url = user_url(acl_server, acl_admin, "orders", queue_rule("orders"))
    rule = queue_rule("orders", channel=False, registry=False)
    url = user_url(acl_server, acl_admin, "orders-producer", rule)
    async with (
        running_worker(worker_url, tmp_path / "w.log", "orders", acl_admin),
        Queue("orders", url) as q,
    ):
        with anyio.fail_after(WAIT):
            jobs = [await q.submit("tests.tasks.add", i, i) for i in range(3)]  # 3 submits
            assert [await job.result() for job in jobs] == [0, 2, 4]
            assert q._results.mode == "polling"
    noisy = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("aioq")]
    assert [r.getMessage().split(" (")[0] for r in noisy] == [
        f"Redis at {acl_server.url.replace('redis://', 'redis://orders-producer:***@')} "
        f"refused to SUBSCRIBE to {Keys('orders').done_channel}"
    ]
    registry = [r for r in caplog.records if "registry" in r.getMessage()]
    assert len(registry) == 1 and registry[0].levelno == logging.DEBUG
    assert {d for d in acl_denials(acl_admin) if d[0] == "orders-producer"} == {
        ("orders-producer", "key", "toplevel", REGISTRY),
        ("orders-producer", "channel", "toplevel", Keys("orders").done_channel),
    }


async def test_worker_without_the_channel_refuses_to_start(
    acl_server: RedisServer, acl_admin: redis.Redis, tmp_path: Path
) -> None:
    """A worker whose user may not publish finished jobs would see every finish script fail
    after its writes: it exits 1 at start, naming the missing channel rule, having claimed
    nothing."""
    url = user_url(acl_server, acl_admin, "orders", queue_rule("orders", channel=False))
    acl_admin.hset(Keys("orders").jobs, "x", b"-")  # something it must not claim
    w = WorkerProcess(url, tmp_path / "w.log", processes=1, env={"AIOQUEUE_TEST_QUEUE": "orders"})
    w.start()
    try:
        assert await w.exited(WAIT) == 1
    finally:
        w.stop()
    out = w.output()
    assert "may not PUBLISH to aioqueue:{orders}:done" in out
    assert "(ACL rule &aioqueue:{orders}:done)" in out and "Traceback" not in out
    assert acl_admin.zcard(Keys("orders").leases) == 0
