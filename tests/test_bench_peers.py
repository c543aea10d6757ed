"""Smoke test of the peers benchmark driver: a quick aioqueue-only run (no peer installs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"


@pytest.mark.timeout(90)
def test_quick_aioqueue_only() -> None:
    pytest.importorskip("aioqueue.worker")
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--peers", "aioqueue"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "framework" in done.stdout
    assert "enqueue jobs/s" in done.stdout
    assert "aioqueue" in done.stdout
