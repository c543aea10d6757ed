"""Smoke test of the peers benchmark driver: a quick aioqueue-only run (no peer installs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"


@pytest.mark.timeout(90)
def test_quick_aioqueue_only(tmp_path: Path) -> None:
    """The driver runs aioqueue's cells and writes its report and raw figures under --out."""
    pytest.importorskip("aioqueue.worker")
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--peers", "aioqueue", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "enqueue jobs/s" in done.stdout and "aioqueue" in done.stdout
    assert (tmp_path / "peers.txt").read_text() in done.stdout
    assert "other load" in done.stdout or "WARNING: the machine was busy" in done.stdout
    data = json.loads((tmp_path / "peers.json").read_text())
    [row] = data["rows"]
    assert row["framework"] == "aioqueue"
    assert {c["status"] for c in row["cells"].values()} == {"ok"}, row["cells"]
    assert all("load" in c for c in row["cells"].values() if c["workload"] != "enqueue")
