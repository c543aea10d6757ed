"""Peers comparison: aioqueue against arq, SAQ, streaQ, taskiq, RQ, Dramatiq, Celery and Huey.

One command runs every framework against the same private ``redis-server`` on this machine::

    python benchmarks/peers/run.py [--n 2000] [--cpu-n 200] [--peers arq,saq] [--repeat 3]
        [--timeout 120] [--out DIR] [--quick]

For each framework and settings variant it measures

* ``enqueue``: enqueueing ``--n`` no-op jobs with the framework's fastest enqueue (bulk API or
  concurrent coroutines; the mode used is printed), in jobs/s;
* ``noop 1p`` / ``noop 2p``: processing ``--n`` pre-enqueued no-op jobs with 1 or 2 worker
  processes, in jobs/s;
* ``cpu 1p`` / ``cpu 2p``: processing ``--cpu-n`` pre-enqueued CPU-bound jobs (a pure-Python loop
  calibrated once at start to ``--cpu-ms`` milliseconds; the same iteration count for everyone).

Every job ``INCR``\\s a counter on the same Redis and throughput is measured from the first
completion to the ``N``-th (see ``common.py``). Each peer runs from its own virtualenv, created
under ``--cache-dir`` and installed from PyPI with the pinned versions in :data:`PEERS`; aioqueue
runs from the interpreter running this script. Every cell has a time limit; failures and time-outs
are reported in the table, never dropped. The report and the raw figures go to ``--out``
(``peers.txt``, ``peers.json``), with a sentence on whether other load on the machine spoiled them.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402
from common import _common  # noqa: E402

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("enqueue", "enqueue", 0),
    ("noop 1p", "noop", 1),
    ("noop 2p", "noop", 2),
    ("cpu 1p", "cpu", 1),
    ("cpu 2p", "cpu", 2),
)


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """How to install and import one framework."""

    requirements: tuple[str, ...]
    import_name: str


PEERS: dict[str, PeerSpec] = {
    "aioqueue": PeerSpec((), "aioqueue"),
    "arq": PeerSpec(("arq==0.28.0", "redis[hiredis]==5.3.1"), "arq"),
    "saq": PeerSpec(
        ("saq[redis,hiredis]==0.26.4", "redis==7.4.1", "typing_extensions==4.16.0"), "saq"
    ),
    "streaq": PeerSpec(("streaq==7.2.0", "redis[hiredis]==8.1.0"), "streaq"),
    "taskiq": PeerSpec(
        ("taskiq==0.13.0", "taskiq-redis==1.2.4", "redis[hiredis]==8.1.0"), "taskiq_redis"
    ),
    "rq": PeerSpec(("rq==3.0.0", "redis[hiredis]==8.1.0"), "rq"),
    "dramatiq": PeerSpec(("dramatiq[redis]==2.2.1", "redis[hiredis]==8.1.0"), "dramatiq"),
    "celery": PeerSpec(("celery[redis]==5.7.0", "redis[hiredis]==8.1.0"), "celery"),
    "huey": PeerSpec(("huey==3.5.4", "redis[hiredis]==8.1.0"), "huey"),
}


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Installed:
    """A peer's interpreter, or why there is none."""

    python: str | None
    error: str | None = None
    seconds: float = 0.0
    reused: bool = False


def install_peer(name: str, cache_dir: Path, timeout: float) -> Installed:
    """Create (or reuse) the peer's virtualenv and install its pinned requirements."""
    spec = PEERS[name]
    if not spec.requirements:
        return Installed(sys.executable, reused=True)
    venv = cache_dir / name
    python = venv / "bin" / "python"
    marker = venv / ".bench-requirements"
    wanted = "\n".join([platform.python_version(), *spec.requirements])
    with contextlib.suppress(OSError):
        if marker.read_text() == wanted and python.exists():
            return Installed(str(python), reused=True)
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + list(spec.requirements),
        [str(python), "-c", f"import {spec.import_name}"],
    ]
    for step in steps:
        left = timeout - (time.monotonic() - started)
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=max(left, 1), check=False
            )
        except subprocess.TimeoutExpired:
            return Installed(None, f"install timed out after {timeout:g}s")
        if done.returncode != 0:
            text = "\n".join(
                line for line in (done.stderr + done.stdout).splitlines() if "WARNING" not in line
            )
            return Installed(None, f"install failed: {common.error_line(text)}")
    marker.write_text(wanted)
    return Installed(str(python), seconds=time.monotonic() - started)


def install_all(names: Sequence[str], cache_dir: Path, timeout: float) -> dict[str, Installed]:
    """Install the peers' environments, a few at a time."""
    results: dict[str, Installed] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {pool.submit(install_peer, name, cache_dir, timeout): name for name in names}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            try:
                results[name] = future.result()
            except Exception as exc:
                results[name] = Installed(None, f"install failed: {exc!r}")
            got = results[name]
            state = got.error or ("reused" if got.reused else f"installed in {got.seconds:.0f}s")
            log(f"[install] {name}: {state}")
    return results


def query_versions(python: str) -> dict[str, str]:
    """Installed distribution versions of a peer's environment."""
    code = (
        "import importlib.metadata as m, json;"
        "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=30, check=False
        )
        return dict(json.loads(done.stdout))
    except (subprocess.TimeoutExpired, ValueError):
        return {}


def run_cell(
    python: str,
    name: str,
    variant: str,
    workload: str,
    processes: int,
    n: int,
    iterations: int,
    timeout: float,
    url: str,
) -> dict[str, Any]:
    """Run one cell in the peer's interpreter, under a hard time limit."""
    env = dict(os.environ)
    env.update(BENCH_REDIS_URL=url, BENCH_COUNTER=common.COUNTER_DEFAULT)
    # aioqueue: what the driver itself would import, else the source tree; a peer: its venv only
    here = [os.environ.get("PYTHONPATH", ""), str(REPO_ROOT)] if name == "aioqueue" else []
    env["PYTHONPATH"] = os.pathsep.join(filter(None, here))
    cmd = [python, str(BENCH_DIR / "common.py"), "--adapter", f"{name}_bench"]
    cmd += ["--variant", variant, "--workload", workload, "--processes", str(processes)]
    cmd += ["--n", str(n), "--iterations", str(iterations), "--timeout", str(timeout)]
    hard_limit = timeout + 60.0
    record: dict[str, Any] = {
        "adapter": f"{name}_bench",
        "variant": variant,
        "workload": workload,
        "processes": processes,
        "n": n,
        "status": "failed",
    }
    proc = subprocess.Popen(
        cmd,
        cwd=str(BENCH_DIR),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=hard_limit)
    except subprocess.TimeoutExpired:
        _common.kill_tree(proc.pid)
        proc.communicate()
        record.update(status="timeout", error=f"cell exceeded its hard limit of {hard_limit:g}s")
        return record
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return dict(json.loads(line))
    record["error"] = common.error_line(err) or f"runner exited with code {proc.returncode}"
    return record


def median_of(tries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The successful try of median rate (the lower of the middle two for an even count; the
    last try if none succeeded), with every try's rate: one lucky run can't make a cell."""
    ok = sorted(
        (t for t in tries if t.get("status") == "ok" and t.get("rate")),
        key=lambda t: float(t["rate"]),
    )
    cell = dict(ok[(len(ok) - 1) // 2] if ok else tries[-1])
    if len(tries) > 1:
        cell["tries"] = [
            t.get("rate") if t.get("status") == "ok" else t.get("status") for t in tries
        ]
    return cell


def fmt_rate(cell: dict[str, Any] | None) -> str:
    """A table entry: the rate, or what went wrong."""
    if cell is None:
        return "-"
    if cell.get("status") == "ok" and cell.get("rate"):
        return f"{cell['rate']:,.0f}"
    if cell.get("status") == "timeout":
        partial = cell.get("partial_rate")
        return f"TIMEOUT(~{partial:,.0f})" if partial else "TIMEOUT"
    return "FAILED"


@dataclasses.dataclass
class Row:
    """One framework at one settings variant."""

    name: str
    variant: str
    version: str = "?"
    install_error: str | None = None
    cells: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.variant})"

    def status(self) -> str:
        if self.install_error:
            return self.install_error[:70]
        problems = [
            f"{col}: {cell.get('error', cell.get('status'))}"
            for col, cell in self.cells.items()
            if cell.get("status") != "ok"
        ]
        if not problems:
            return "ok"
        return problems[0][:70] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")

    def settings(self) -> str:
        seen: dict[str, list[str]] = {}
        for col, cell in self.cells.items():
            text = cell.get("settings")
            if text and col != "enqueue":
                seen.setdefault(str(text), []).append(col.split()[0])
        if len(seen) == 1:
            return next(iter(seen))
        return " | ".join(f"{'/'.join(dict.fromkeys(cols))}: {text}" for text, cols in seen.items())


def ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> str:
    """aioqueue's rate divided by a peer's, when both are measured."""
    if not ours or not theirs or ours.get("status") != "ok" or theirs.get("status") != "ok":
        return "-"
    if not ours.get("rate") or not theirs.get("rate"):
        return "-"
    return f"{ours['rate'] / theirs['rate']:.2f}x"


def report(rows: Sequence[Row], machine: dict[str, Any], config: dict[str, Any]) -> str:
    """The full text report."""
    out: list[str] = []
    headers = ["framework", "version", "settings", *[f"{c} jobs/s" for c, _, _ in COLUMNS]]
    headers.append("status")
    table = [
        [row.name, row.version, row.variant, *[fmt_rate(row.cells.get(c)) for c, _, _ in COLUMNS]]
        + [row.status()]
        for row in rows
    ]
    out.append(_common.format_table(headers, table))
    out.append("")
    out.append("Settings per row (P = worker processes of the column):")
    for row in rows:
        if row.install_error:
            out.append(f"  {row.label}: not run ({row.install_error})")
            continue
        enqueue_mode = row.cells.get("enqueue", {}).get("enqueue_mode", "?")
        out.append(f"  {row.label}: {row.settings()}; enqueue: {enqueue_mode}")
    problems = [
        f"  {row.label} {col}: {cell.get('status')}: {cell.get('error', '')}"
        for row in rows
        for col, cell in row.cells.items()
        if cell.get("status") != "ok"
    ]
    problems += [f"  {row.label}: {row.install_error}" for row in rows if row.install_error]
    if problems:
        out += ["", "Failures and time-outs:", *problems]
    ours = next((r for r in rows if r.name == "aioqueue"), None)
    others = [r for r in rows if r.name != "aioqueue"]
    if ours is not None and others:
        out += ["", f"Ratios aioqueue ({ours.variant}) / peer (>1.00x: aioqueue faster):"]
        ratio_rows = [
            [
                row.name,
                row.variant,
                *[ratio(ours.cells.get(c), row.cells.get(c)) for c, *_ in COLUMNS],
            ]
            for row in others
        ]
        out.append(
            _common.format_table(["peer", "settings", *[c for c, _, _ in COLUMNS]], ratio_rows)
        )
    out += [
        "",
        f"Machine: {_common.describe_machine(machine)}",
        "Workload: {n} no-op jobs; {cpu_n} CPU jobs of burn_loop({iterations}) = {cpu_ms:.1f} ms "
        "each (calibrated); time limit {timeout:g}s per cell; median of {repeat} run(s) per cell; "
        "throughput measured from the first completion to the last.".format(**config),
    ]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=2000, help="no-op jobs per cell")
    parser.add_argument("--cpu-n", type=int, default=200, help="CPU-bound jobs per cell")
    parser.add_argument("--cpu-ms", type=float, default=20.0, help="target cost of one CPU job")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated frameworks")
    parser.add_argument(
        "--variants", default="best,defaults", help="settings variants to run where defined"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="time limit per cell (s)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per cell; the median successful one is kept"
    )
    parser.add_argument("--out", type=Path, default=None, help=_common.out_help("peers"))
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(
            os.environ.get("AIOQUEUE_BENCH_CACHE", Path.home() / ".cache" / "aioqueue-bench")
        )
        / "peers",
        help="where the peers' virtualenvs live",
    )
    parser.add_argument("--install-timeout", type=float, default=900.0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny N, short time limits, 1-process columns only, aioqueue only "
        "unless --peers is given",
    )
    args = parser.parse_args(argv)
    if args.quick:
        if "--peers" not in " ".join(argv if argv is not None else sys.argv):
            args.peers = "aioqueue"
        args.n, args.cpu_n, args.cpu_ms = min(args.n, 50), min(args.cpu_n, 8), min(args.cpu_ms, 5)
        args.timeout = min(args.timeout, 15.0)
        args.variants, args.repeat = "best", 1
    args.repeat = max(1, args.repeat)
    args.out = _common.out_dir(args.out, args.quick)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; exit 0 when the run completed (individual failures are reported)."""
    args = parse_args(argv)
    started = time.monotonic()
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        log(f"unknown peers: {', '.join(unknown)} (known: {', '.join(PEERS)})")
        return 2
    names = sorted(names, key=list(PEERS).index)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    columns = [c for c in COLUMNS if not args.quick or c[2] <= 1]

    installed = install_all(names, args.cache_dir.expanduser(), args.install_timeout)
    meter = _common.CpuMeter().start()
    cal = _common.calibrate(args.cpu_ms)
    log(f"[calibrate] burn_loop({cal.iterations}) takes {cal.compute_ms:.1f} ms on this machine")
    time.sleep(max(meter.started_at + (0.1 if args.quick else 1.0) - time.perf_counter(), 0))
    before = meter.stop()

    rows: list[Row] = []
    with _common.redis_url_or_private(None) as server:
        machine = _common.machine_info(server.url)
        for name in names:
            inst = installed[name]
            if inst.python is None:
                rows.append(Row(name, "-", install_error=inst.error))
                continue
            versions = query_versions(inst.python)
            version = versions.get(name, "?")
            if name == "aioqueue" and version == "?":
                version = "source tree"
            declared = peer_variants(name)
            chosen = [v for v in declared if v in variants] or declared[:1]
            for variant in chosen:
                row = Row(name, variant, version)
                rows.append(row)
                for column, workload, processes in columns:
                    n = args.cpu_n if workload == "cpu" else args.n
                    tries = [
                        run_cell(inst.python, name, variant, workload, max(processes, 1), n,
                                 cal.iterations, args.timeout, server.url)
                        for _ in range(args.repeat)
                    ]  # fmt: skip
                    cell = median_of(tries)
                    cell["column"] = column
                    row.cells[column] = cell
                    if cell.get("version"):
                        row.version = str(cell["version"])
                    log(f"[{name}/{variant}] {column}: {fmt_rate(cell)} {cell.get('error', '')}")
    config = {
        "n": args.n,
        "cpu_n": args.cpu_n,
        "iterations": cal.iterations,
        "cpu_ms": cal.compute_ms,
        "timeout": args.timeout,
        "repeat": args.repeat,
    }
    during = cells_load(rows)
    total = time.monotonic() - started
    with _common.report_to(args.out, "peers") as text:
        print(report(rows, machine, config))
        print(_common.load_verdict(before, during))
        print(f"Total run time: {total:.0f}s")
    payload = {
        "machine": machine,
        "config": config,
        "other_load": {"before": before, "during": during},
        "total_s": total,
        "installs": {
            name: {
                "requirements": list(PEERS[name].requirements),
                "error": inst.error,
                "python": "venv" if PEERS[name].requirements else "driver interpreter",
            }
            for name, inst in installed.items()
        },
        "rows": [
            {
                "framework": row.name,
                "variant": row.variant,
                "version": row.version,
                "install_error": row.install_error,
                "cells": row.cells,
            }
            for row in rows
        ],
    }
    log(f"report: {text}; json: {_common.write_json(args.out / 'peers.json', payload)}")
    return 0


def cells_load(rows: Sequence[Row]) -> dict[str, float]:
    """Other processes' CPU while the cells' workers ran, summed over every cell."""
    loads = [cell["load"] for row in rows for cell in row.cells.values() if "load" in cell]
    total = {k: sum(load[k] for load in loads) for k in ("others", "wall", "noise_s")}
    total["others_cores"] = total["others"] / total["wall"] if total["wall"] else 0.0
    return total


def peer_variants(name: str) -> list[str]:
    """The settings variants an adapter declares in its ``VARIANTS`` tuple (read statically)."""
    tree = ast.parse((BENCH_DIR / f"{name}_bench.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "VARIANTS" for t in node.targets
        ):
            return [str(v) for v in ast.literal_eval(node.value)]
    return ["best"]


if __name__ == "__main__":
    sys.exit(main())
