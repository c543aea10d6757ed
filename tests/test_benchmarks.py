"""The benchmark scripts run end to end in ``--quick`` mode and report what they promise."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aioqueue.testing import find_redis_server

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402

pytestmark = pytest.mark.bench

LIMIT_S = 60
LOAD_SENTENCES = ("other load: too little to matter", "WARNING: the machine was busy")

RUN_FIELDS = {
    "processes", "workers", "jobs", "wall_s", "jobs_per_s", "speedup", "efficiency",
    "overhead_ms", "p50_ms", "p99_ms", "others_cores",
}  # fmt: skip
MACHINE_FIELDS = {"cpu_model", "logical_cores", "python", "redis_server", "os"}

try:
    HAVE_REDIS = bool(find_redis_server())
except FileNotFoundError:
    HAVE_REDIS = False
needs_redis = pytest.mark.skipif(not HAVE_REDIS, reason="no redis-server to benchmark against")


def _run(script: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _check_outputs(proc: subprocess.CompletedProcess[str], out: Path, name: str) -> dict:
    """The report went to stdout and to NAME.txt, with a sentence on other load; the JSON too."""
    report = (out / f"{name}.txt").read_text()
    assert report and report in proc.stdout
    assert any(sentence in report for sentence in LOAD_SENTENCES)
    data = json.loads((out / f"{name}.json").read_text())
    machine = data["machine"]
    assert MACHINE_FIELDS <= machine.keys()
    assert isinstance(machine["logical_cores"], int) and machine["logical_cores"] >= 1
    assert machine["redis_server"] != "unknown"
    assert {"before", "during"} <= data["other_load"].keys()
    return data


@needs_redis
def test_scaling_quick(tmp_path: Path) -> None:
    """scaling.py times 1 and 2 processes and writes its report, JSON and plot under --out."""
    proc = _run("scaling.py", tmp_path, "--no-progress")
    assert "calibration: burn(" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("processes"))
    for column in ("jobs/s", "speedup", "efficiency", "overhead ms/job", "p50 ms", "p99 ms"):
        assert column in header
    assert "\r" not in proc.stderr  # no progress bar when not a terminal

    runs = _check_outputs(proc, tmp_path, "scaling")["runs"]
    assert [r["processes"] for r in runs] == [1, 2]
    for run in runs:
        assert RUN_FIELDS <= run.keys()
        assert run["jobs"] > 0 and run["wall_s"] > 0 and run["jobs_per_s"] > 0
        assert math.isclose(run["efficiency"], run["speedup"] / run["processes"], rel_tol=1e-9)
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        # every process waited for something at least once: the supervisor for its children
        # and Redis, the children for jobs, Redis and the producer for each other
        assert run["wakeups_per_job"].keys() == {"children", "supervisor", "producer", "redis"}
        assert all(n > 0 for n in run["wakeups_per_job"].values())
    assert "Wake-ups per job by process" in proc.stdout
    assert runs[0]["speedup"] == 1.0
    if "plot skipped" not in proc.stdout:
        assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_redis
def test_throughput_quick(tmp_path: Path) -> None:
    """throughput.py measures every section and the memory of a 1-process worker."""
    proc = _run("throughput.py", tmp_path)
    assert "section" in proc.stdout and "per second" in proc.stdout
    assert "floor:" in proc.stdout and "supervisor MiB" in proc.stdout

    data = _check_outputs(proc, tmp_path, "throughput")
    assert data["floor"]["per_s"] > 0
    rows = data["rows"]
    assert {(r["section"], r["processes"]) for r in rows} == {
        ("enqueue", 0), ("end to end", 1), ("latency", 1), ("processing", 1)
    }  # fmt: skip
    assert sum(1 for r in rows if r["section"] == "enqueue") == 3
    for r in rows:
        assert r["per_s"] > 0 and r["n"] > 0
        if r["section"] == "latency":
            assert 0 < r["p50_ms"] <= r["p99_ms"]
    mem = data["memory"]["1"]
    assert mem["supervisor_rss_kib"] > 0
    assert [c["rss_kib"] > 0 for c in mem["children"]] == [True]


def test_default_output_is_untracked() -> None:
    """Without --out the scripts write where git ignores, never over the published figures."""
    if shutil.which("git") is None or not (_common.REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for quick in (False, True):
        path = _common.out_dir(None, quick) / "scaling.png"
        assert _common.BENCH_DIR not in path.parents
        ignored = subprocess.run(
            ["git", "-C", str(_common.REPO_ROOT), "check-ignore", "-q", str(path)], check=False
        )
        assert ignored.returncode == 0, f"{path} is not ignored by git"


BURN_THEN_WAIT = """
import subprocess, sys
sys.stdin.readline()
burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass"
subprocess.run([sys.executable, "-c", burn], check=True)
sys.stdin.read()
"""


def test_cpu_meter_tells_the_tree_from_other_load() -> None:
    """CPU of a reaped grandchild counts as the tree's own; a busy loop elsewhere as other load."""
    root = subprocess.Popen([sys.executable, "-c", BURN_THEN_WAIT], stdin=subprocess.PIPE)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        meter = _common.CpuMeter(root=root.pid).start()
        assert root.stdin is not None
        root.stdin.write(b"go\n")
        root.stdin.flush()
        deadline = time.monotonic() + 20
        while True:
            used = meter.stop()
            if used["own"] >= 0.25 and used["others"] >= 0.3:
                break
            assert time.monotonic() < deadline, used
            time.sleep(0.05)  # polling interval
    finally:
        busy.kill()
        root.kill()
        busy.wait()
        root.communicate()
    assert _common.is_busy(used)
    verdict = _common.load_verdict(used, used)
    assert verdict.startswith("WARNING: the machine was busy") and "NOT trustworthy" in verdict


def test_limits_smoke() -> None:
    """benchmarks/limits.py runs each case through the scripts and prints Redis CPU per job."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "limits.py"), "--jobs", "300"],
        capture_output=True, text=True, timeout=LIMIT_S, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cases = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert cases == ["plain", "group", "rate", "after"] and "Redis us/job" in proc.stdout


@needs_redis
def test_async_io_quick(tmp_path: Path) -> None:
    """async_io.py runs I/O-bound async jobs at two concurrency settings; more at once is
    faster, within the ideal."""
    proc = _run("async_io.py", tmp_path)
    assert "ideal jobs/s" in proc.stdout and "supervisor CPU ms/job" in proc.stdout
    runs = _check_outputs(proc, tmp_path, "async_io")["runs"]
    assert [r["async_concurrency"] for r in runs] == [1, 50]
    assert all(0 < r["jobs_per_s"] <= r["ideal_per_s"] * 1.05 for r in runs)
    assert runs[1]["jobs_per_s"] > 5 * runs[0]["jobs_per_s"]


def test_backlog_quick(tmp_path: Path) -> None:
    """backlog.py holds two backlogs steady and times completions at each."""
    proc = _run("backlog.py", tmp_path)
    assert "Redis us/job" in proc.stdout and "info() ms" in proc.stdout
    rows = _check_outputs(proc, tmp_path, "backlog")["rows"]
    assert [r["backlog"] for r in rows] == [1000, 20000]
    assert all(r["jobs"] >= 5000 and r["per_s"] > 0 and r["redis_mib"] > 0 for r in rows)
