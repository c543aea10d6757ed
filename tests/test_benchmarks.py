"""The benchmark scripts run end to end in ``--quick`` mode and report what they promise."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from aioqueue.testing import find_redis_server

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
LIMIT_S = 60

RUN_FIELDS = {
    "processes", "workers", "jobs", "wall_s", "jobs_per_s", "speedup", "efficiency",
    "overhead_ms", "p50_ms", "p99_ms",
}  # fmt: skip
MACHINE_FIELDS = {"cpu_model", "logical_cores", "python", "redis_server", "os"}

try:
    find_redis_server()
except FileNotFoundError:
    pytestmark = pytest.mark.skip(reason="no redis-server to benchmark against")


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _check_machine(machine: dict[str, object]) -> None:
    assert MACHINE_FIELDS <= machine.keys()
    assert isinstance(machine["logical_cores"], int) and machine["logical_cores"] >= 1
    assert machine["redis_server"] != "unknown"


def test_scaling_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "scaling.json"
    plot = tmp_path / "scaling.png"
    proc = _run("scaling.py", "--no-progress", "--json", str(out_json), "--plot", str(plot))
    assert "calibration: burn(" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("processes"))
    for column in ("jobs/s", "speedup", "efficiency", "overhead ms/job", "p50 ms", "p99 ms"):
        assert column in header
    assert "\r" not in proc.stderr  # no progress bar when not a terminal

    data = json.loads(out_json.read_text())
    _check_machine(data["machine"])
    runs = data["runs"]
    assert [r["processes"] for r in runs] == [1, 2]
    for run in runs:
        assert RUN_FIELDS <= run.keys()
        assert run["jobs"] > 0 and run["wall_s"] > 0 and run["jobs_per_s"] > 0
        assert math.isclose(run["efficiency"], run["speedup"] / run["processes"], rel_tol=1e-9)
        assert 0 < run["p50_ms"] <= run["p99_ms"]
    assert runs[0]["speedup"] == 1.0
    if "plot skipped" not in proc.stdout:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_throughput_quick(tmp_path: Path) -> None:
    out_json = tmp_path / "throughput.json"
    proc = _run("throughput.py", "--json", str(out_json))
    assert "section" in proc.stdout and "per second" in proc.stdout
    assert "floor:" in proc.stdout and "supervisor MiB" in proc.stdout

    data = json.loads(out_json.read_text())
    _check_machine(data["machine"])
    assert data["floor"]["per_s"] > 0
    rows = data["rows"]
    sections = {(r["section"], r["processes"]) for r in rows}
    for p in (1, 2):
        assert {("end to end", p), ("latency", p), ("processing", p)} <= sections
    assert sum(1 for r in rows if r["section"] == "enqueue") == 3
    for r in rows:
        assert r["per_s"] > 0 and r["n"] > 0
        if r["section"] == "latency":
            assert 0 < r["p50_ms"] <= r["p99_ms"]
    for p in ("1", "2"):
        mem = data["memory"][p]
        assert mem["supervisor_rss_kib"] > 0
        assert len(mem["children"]) == int(p)
        assert all(c["rss_kib"] > 0 for c in mem["children"])
