"""``python -m aioqueue.testing``: a private Redis for trying aioqueue out."""

from __future__ import annotations

import signal
import subprocess
import sys

import redis


def test_private_redis_prints_its_url_serves_and_stops_on_ctrl_c() -> None:
    """It prints an export line with a URL that answers PING, and exits 0 on SIGINT."""
    with subprocess.Popen(
        [sys.executable, "-m", "aioqueue.testing"], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("export AIOQUEUE_REDIS_URL=redis://127.0.0.1:")
        with redis.Redis.from_url(line.partition("=")[2]) as r:
            assert r.ping()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
