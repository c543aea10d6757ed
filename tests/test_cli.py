"""The ``aioqueue-worker`` command line."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioqueue", *args], capture_output=True, text=True, timeout=30,
        cwd=ROOT,
    )  # fmt: skip


def test_bad_spec_is_a_clear_error(redis_url: str) -> None:
    """A worker given a bad MODULE:ATTR exits non-zero with a message saying what is wrong."""
    out = _run("tests.tasks:nothing", "--redis-url", redis_url)
    assert out.returncode != 0 and "nothing" in out.stderr
    out = _run("tests.tasks:Point", "--redis-url", redis_url)
    assert out.returncode != 0 and "not an aioqueue.Queue" in out.stderr
    out = _run("no_colon", "--redis-url", redis_url)
    assert out.returncode != 0 and "expected MODULE:ATTR" in out.stderr


def test_bad_settings_are_refused(redis_url: str) -> None:
    """Out-of-range settings are refused before anything starts."""
    out = _run("tests.tasks:queue", "--redis-url", redis_url, "--lease", "0.5", "--heartbeat", "1")
    assert out.returncode != 0 and "lease (0.5) must be longer than heartbeat (1.0)" in out.stderr
    out = _run("tests.tasks:queue", "--processes", "0")
    assert out.returncode != 0 and "processes must be >= 1" in out.stderr


def test_help_lists_the_options() -> None:
    """--help documents the worker's options."""
    out = _run("--help")
    for flag in ("--processes", "--redis-url", "--burst", "--log-level", "--grace"):
        assert flag in out.stdout
