"""How aioqueue scales a CPU-bound job over worker processes.

A pure-Python job of fixed cost (``bench_tasks.burn``, calibrated in this process to take about
``--job-ms`` milliseconds) runs through aioqueue with 1, 2, 4 ... processes, as one supervisor or
as ``--workers`` supervisors sharing the processes (as several hosts would). For each run::

    start the worker(s); wait until the queue lists them all      (not timed)
    t0 = now
    keep --window jobs in flight: submit, await the result, submit the next ...
    t1 = now, when the last result is back                          (wall = t1 - t0)
    stop the worker(s) with SIGTERM                                  (not timed)

and it reports wall time, jobs/s, speedup over the baseline (the 1-process run), efficiency
(speedup / processes), the overhead per job (``wall * processes / jobs - reference``, where
``reference`` is what a job took in the plain processes of the bare run just after, or without
one the job's pure cost measured in this process), and percentiles of each job's
submit-to-result latency. It prints a table, saves a PNG of speedup against processes with the
ideal line, and with ``--json`` one row per run plus a description of the machine.

With ``--hosts`` each supervisor runs on a host of its own, a network namespace linked to Redis
by veth and a bridge (``_netns.py``; root only), optionally with ``--delay-ms`` of ``tc netem``
delay each way: the network of several hosts, on one machine.

Run ``python benchmarks/scaling.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common
import _netns
import bench_tasks
from _common import Calibration, CpuMeter, RedisTarget

from aioqueue import Job, Queue

CPU_GROUPS = ("children", "supervisor", "producer", "redis")


@dataclass
class Run:
    """One run: ``processes`` children over ``workers`` supervisors, ``jobs`` jobs."""

    processes: int
    workers: int
    children: list[int]
    jobs: int
    window: int
    wall_s: float
    jobs_per_s: float
    speedup: float
    ideal: float
    efficiency: float
    overhead_ms: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    ready_s: float
    bare_jobs_per_s: float
    vs_bare: float
    cpu_ms_per_job: dict[str, float]
    others_cores: float
    vs_bare_runs: list[float] = field(default_factory=list)  # every repeat's, this row's the median
    wakeups_per_job: dict[str, float] = field(default_factory=dict)  # see _common.wakeups


def default_processes() -> list[int]:
    """1, 2, 4 ... up to the CPU count, and the CPU count itself."""
    cores = os.cpu_count() or 1
    out = [1]
    while out[-1] * 2 <= cores:
        out.append(out[-1] * 2)
    if out[-1] != cores:
        out.append(cores)
    return out


def parse_processes(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; sorted, without duplicates."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,4 — got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"process counts must be >= 1, got {text!r}")
    return values


@dataclass
class Measured:
    """What one run measured, before it is summarized."""

    wall_s: float
    latencies_s: list[float]
    ready_s: float
    children: list[int]
    cpu_s: dict[str, float]
    wakeups: dict[str, int] = field(default_factory=dict)


async def run_one(
    redis: RedisTarget,
    processes: int,
    workers: int,
    jobs: int,
    window: int,
    cal: Calibration,
    timeout: float,
    progress: bool,
    log_dir: Path,
    hosts: _netns.Hosts | None = None,
) -> Measured:
    """One run: start the workers (each on a host of ``hosts`` if given), wait until
    registered, then time ``jobs`` jobs."""
    children = _common.split(processes, workers)
    deadline = time.monotonic() + timeout
    async with bench_tasks.fresh_queue(redis, "scaling") as queue:
        with contextlib.ExitStack() as stack:
            procs = []
            for i, n in enumerate(children):
                w = bench_tasks.worker(queue, n, log_dir / f"worker-{n}-{i}.log")
                procs.append(stack.enter_context(hosts.place(w, i) if hosts else w))

            def check() -> None:
                for w in procs:
                    w.check_alive()

            async def all_registered() -> bool:
                return (await queue.info()).workers >= workers

            ready_s = await _common.wait_until(
                all_registered,
                max(deadline - time.monotonic(), 0.0),
                f"{workers} worker(s) to register on queue {queue.name}",
                interval=0.02,
                check=check,
            )
            meter = CpuMeter(
                {
                    "supervisor": [w.pid for w in procs],
                    "children": [c for w in procs for c in _common.child_pids(w.pid)],
                    "redis": [redis.pid] if redis.pid is not None else [],
                    "producer": [os.getpid()],
                }
            ).start()
            bar = _common.Progress(jobs, f"{processes:>3}p/{workers}w", enabled=progress)
            latencies: list[float] = []
            t0 = time.perf_counter()
            await _timed_jobs(queue, jobs, window, cal, deadline, latencies, bar, check)
            wall = time.perf_counter() - t0
            cpu = meter.stop()
            bar.update(len(latencies), force=True)
            bar.close()
    return Measured(wall, latencies, ready_s, children, cpu, meter.wakeups)


_BARE = """
import sys, time
sys.path.insert(0, sys.argv[3])
from _common import burn_loop
n, k = int(sys.argv[1]), int(sys.argv[2])
burn_loop(n)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.time()
for _ in range(k):
    burn_loop(n)
print(t0, time.time())
"""


def bare(processes: int, jobs: int, cal: Calibration, timeout: float) -> float:
    """The machine's own rate: ``processes`` plain processes share ``jobs`` calls of ``burn``
    with no queue at all (started, warmed up, then released together); returns jobs/s."""
    shares = _common.split(jobs, processes) if jobs >= processes else [1] * processes
    cmd = [sys.executable, "-c", _BARE, str(cal.iterations)]
    procs = [
        subprocess.Popen(
            [*cmd, str(k), str(_common.BENCH_DIR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in shares
    ]
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            assert p.stdout is not None
            ready, _, _ = select.select([p.stdout], [], [], max(deadline - time.monotonic(), 0))
            if not ready or p.stdout.readline().strip() != "ready":
                raise RuntimeError("a bare burn process failed to start")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = []
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            start, end = (float(x) for x in out.split())
            spans.append((start, end))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return sum(shares) / wall


def _expect(value: int, cal: Calibration) -> None:
    if value != cal.checksum:
        raise RuntimeError(f"burn({cal.iterations}) returned {value}, expected {cal.checksum}")


async def _timed_jobs(
    queue: Queue,
    jobs: int,
    window: int,
    cal: Calibration,
    deadline: float,
    latencies: list[float],
    bar: _common.Progress,
    check: Callable[[], None],
) -> None:
    """``window`` lanes, each submitting one job and awaiting its result, until ``jobs`` ran;
    with ``window`` 0, every job in one ``submit_many``, then all results awaited."""
    remaining = jobs

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            job = await queue.submit(bench_tasks.burn, cal.iterations)
            await wait(job, t)

    async def wait(job: Job[int], t: float) -> None:
        _expect(await _result(job, deadline), cal)
        latencies.append(time.perf_counter() - t)
        bar.update(len(latencies))

    if window > 0:
        work = asyncio.gather(*(lane() for _ in range(min(window, jobs))))
    else:
        t = time.perf_counter()
        handles = await queue.submit_many(bench_tasks.burn, [(cal.iterations,)] * jobs)
        work = asyncio.gather(*(wait(job, t) for job in handles))
    await _common.watch(work, check)


async def _result(job: Job[int], deadline: float) -> int:
    return await job.result(timeout=max(deadline - time.monotonic(), 0.001))


def summarize(
    processes: int,
    workers: int,
    jobs: int,
    window: int,
    m: Measured,
    bare_rate: float,
    cal: Calibration,
    baseline: tuple[int, float] | None,
) -> Run:
    """Turn one run's measurements into a row; ``baseline`` is ``(processes, jobs_per_s)``."""
    wall = m.wall_s
    rate = jobs / wall
    base_p, base_rate = baseline or (processes, rate)
    speedup = rate / base_rate * base_p
    lat_ms = [x * 1000 for x in m.latencies_s]
    cpu = {k: m.cpu_s[k] * 1000 / jobs for k in CPU_GROUPS if k in m.cpu_s}
    # a job's cost in the plain processes run moments later, not the calibration's: this VM's
    # CPU time for the same call moves by 10-20% with how long the CPU has been busy
    reference_ms = processes / bare_rate * 1000 if bare_rate > 0 else cal.compute_ms
    return Run(
        processes=processes,
        workers=workers,
        children=m.children,
        jobs=jobs,
        window=window,
        wall_s=wall,
        jobs_per_s=rate,
        speedup=speedup,
        ideal=float(processes),
        efficiency=speedup / processes,
        overhead_ms=wall * processes / jobs * 1000 - reference_ms,
        p50_ms=_common.percentile(lat_ms, 50),
        p99_ms=_common.percentile(lat_ms, 99),
        mean_ms=sum(lat_ms) / len(lat_ms) if lat_ms else float("nan"),
        max_ms=max(lat_ms) if lat_ms else float("nan"),
        ready_s=m.ready_s,
        bare_jobs_per_s=bare_rate,
        vs_bare=rate / bare_rate if bare_rate > 0 else float("nan"),
        cpu_ms_per_job=cpu,
        others_cores=m.cpu_s["others_cores"],
        wakeups_per_job={k: m.wakeups[k] / jobs for k in CPU_GROUPS if k in m.wakeups},
    )


def median_run(tries: list[Run]) -> Run:
    """The run whose ratio to its bare run is the median of ``tries`` (by rate without bare
    runs), with every try's ratio kept on it."""
    no_bare = any(r.vs_bare != r.vs_bare for r in tries)  # NaN: --no-bare
    ranked = sorted(tries, key=lambda r: r.jobs_per_s if no_bare else r.vs_bare)
    run = ranked[(len(ranked) - 1) // 2]
    run.vs_bare_runs = [r.vs_bare for r in tries]
    return run


def plot(runs: list[Run], path: Path, cal: Calibration, machine: dict[str, Any]) -> str:
    """Save speedup against processes, with the ideal line; returns what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    xs = [r.processes for r in runs]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    top = max(xs)
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="ideal (speedup = processes)")
    ax.plot(xs, [r.speedup for r in runs], marker="o", label="aioqueue")
    for r in runs:
        ax.annotate(
            f"{r.efficiency * 100:.0f}%",
            (r.processes, r.speedup),
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=8,
        )
    workers = sorted({r.workers for r in runs})
    ax.set_xlabel("worker processes" + (f" ({workers[0]} supervisor(s))" if workers else ""))
    ax.set_ylabel("speedup over 1 process")
    ax.set_xlim(0, top + 0.5)
    ax.set_ylim(0, top + 0.5)
    ax.set_xticks(xs)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(
        f"aioqueue scaling: {cal.compute_ms:.1f} ms CPU-bound jobs\n"
        f"{machine['cpu_model']}, {machine['logical_cores']} cores",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"plot: {path}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        description="Scale a CPU-bound aioqueue job over 1, 2, 4 ... worker processes.",
    )
    p.add_argument("--redis-url", help="use this Redis (default: start a private redis-server)")
    p.add_argument(
        "--processes",
        type=parse_processes,
        default=None,
        help="process counts to run, e.g. 1,2,4,8,16 (default: 1, 2, 4 ... CPU count)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="supervisors sharing the processes, like several hosts (default 1)",
    )
    p.add_argument(
        "--job-ms",
        type=float,
        default=20.0,
        help="CPU time of one job in ms, calibrated here (default %(default)s)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="jobs per run (default: enough for about --seconds per run at ideal "
        "scaling, i.e. proportional to processes)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="target length of each run when --jobs is not given (default 3)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="jobs kept in flight, each awaited before the next is submitted "
        "(default 4 x processes, at least 8); 0 submits all at once",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="bound on each run, worker start-up included (default 300 s, 30 s with --quick)",
    )
    p.add_argument(
        "--hosts",
        action="store_true",
        help="run each supervisor on a host of its own: a network namespace linked to a private "
        "Redis by veth and a bridge (Linux, root)",
    )
    p.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="with --hosts: tc netem delay on each host's link, each way (default 0; needs a "
        "kernel with netem)",
    )
    p.add_argument("--out", type=Path, default=None, help=_common.out_help("scaling"))
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument(
        "--no-bare",
        action="store_true",
        help="skip the reference run of the same calls in plain processes, without the queue",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per process count, each followed by its bare run; the row shown is the run "
        "with the median ratio to bare, as the machine's speed drifts between runs (default 1)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny everything (1 ms jobs, ~0.1 s runs): a smoke test",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.job_ms = min(args.job_ms, 1.0)
        args.seconds = min(args.seconds, 0.1)
        if args.processes is None:
            args.processes = [1, 2]
    if args.processes is None:
        args.processes = default_processes()
    if args.timeout is None:
        args.timeout = 30.0 if args.quick else 300.0
    args.out = _common.out_dir(args.out, args.quick)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.job_ms <= 0 or args.seconds <= 0 or args.timeout <= 0:
        p.error("--job-ms, --seconds and --timeout must be > 0")
    if args.jobs is not None and args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.delay_ms < 0 or (args.delay_ms and not args.hosts):
        p.error("--delay-ms must be >= 0, and goes with --hosts")
    if args.hosts and args.redis_url:
        p.error("--hosts starts a private Redis the hosts can reach: drop --redis-url")
    return args


def main(argv: list[str] | None = None) -> int:
    """Calibrate, run every process count, report."""
    args = parse_args(argv)
    with _common.report_to(args.out, "scaling") as report:
        code = measure(args)
        print(f"report: {report}")
    return code


def measure(args: argparse.Namespace) -> int:
    """What :func:`main` does, its output going to the report."""
    counts = [n for n in args.processes if n >= args.workers]
    skipped = [n for n in args.processes if n < args.workers]
    if skipped:
        print(f"skipping {skipped}: fewer processes than --workers {args.workers}")
    if not counts:
        print("nothing to run", file=sys.stderr)
        return 2
    started = time.perf_counter()

    load = CpuMeter().start()
    cal = _common.calibrate(args.job_ms, rounds=5 if args.quick else 9)
    print(
        f"calibration: burn({cal.iterations:,}) takes {cal.compute_ms:.2f} ms of CPU time "
        f"(median of {len(cal.samples_ms)}, target {cal.target_ms:g} ms; "
        f"{cal.wall_ms:.2f} ms elapsed) in this process"
    )
    time.sleep(max(load.started_at + (0.1 if args.quick else 1.0) - time.perf_counter(), 0))
    before = load.stop()

    with contextlib.ExitStack() as stack:
        hosts = None
        if args.hosts:
            try:
                hosts = stack.enter_context(_netns.hosts(args.workers, args.delay_ms))
            except RuntimeError as exc:
                print(f"scaling.py: {exc}", file=sys.stderr)
                return 2
        redis = stack.enter_context(
            _netns.private_redis(hosts) if hosts else _common.redis_url_or_private(args.redis_url)
        )
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="aioq-scaling-"))
        load.start()
        machine = _common.machine_info(redis.url)
        print(f"machine: {_common.describe_machine(machine)}")
        print(f"redis: {'private redis-server' if redis.private else redis.url}")
        if hosts:
            rtt = hosts.rtt_ms(redis.url)
            machine["hosts"] = {"workers": args.workers, "delay_ms": args.delay_ms, "rtt_ms": rtt}
            print(hosts.describe(rtt))
        print(
            "timed: from the moment every worker is registered (children started, tasks "
            "imported) until the last result is back; worker start-up and shutdown are not timed"
        )
        runs: list[Run] = []
        baseline: tuple[int, float] | None = None
        for n in counts:
            jobs = args.jobs or max(n * math.ceil(args.seconds * 1000 / cal.compute_ms), 4 * n)
            window = args.window if args.window is not None else max(4 * n, 8)
            tries = []
            for _ in range(args.repeat):
                measured: Measured = _common.run_async(
                    run_one(redis, n, args.workers, jobs, window, cal, args.timeout,
                            not args.no_progress, Path(tmp), hosts)
                )  # fmt: skip
                bare_rate = bare(n, jobs, cal, args.timeout) if not args.no_bare else float("nan")
                run = summarize(n, args.workers, jobs, window, measured, bare_rate, cal, baseline)
                tries.append(run)
                print(
                    f"  {n} process(es) / {args.workers} worker(s): {jobs} jobs in "
                    f"{run.wall_s:.2f} s, {run.jobs_per_s:.1f} jobs/s (workers ready after "
                    f"{run.ready_s:.2f} s); bare processes: {bare_rate:.1f} jobs/s"
                )
            run = median_run(tries)
            if baseline is None:
                baseline = (n, run.jobs_per_s)
            runs.append(run)
        during = load.stop()

    print()
    print_results(runs, cal)
    print()
    print(_common.load_verdict(before, during))
    if not args.no_plot:
        print(plot(runs, args.out / "scaling.png", cal, machine))
    data = {
        "benchmark": "scaling",
        "machine": machine,
        "calibration": asdict(cal),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "redis_url")},
        "other_load": {"before": before, "during": during},
        "runs": [asdict(r) for r in runs],
    }
    print(f"json: {_common.write_json(args.out / 'scaling.json', data)}")
    print(f"total time: {time.perf_counter() - started:.1f} s")
    return 0


def children_busy(r: Run) -> float:
    """The share of the run's wall time that its children spent on the CPU (their CPU time
    over wall time x processes)."""
    children_ms = r.cpu_ms_per_job.get("children", float("nan")) * r.jobs
    return children_ms / 1000 / (r.wall_s * r.processes)


def _vs_bare(r: Run) -> str:
    """The row's ratio to bare, and the range over its repeats when there were several."""
    if r.vs_bare != r.vs_bare:
        return "-"
    if len(r.vs_bare_runs) < 2:
        return f"{r.vs_bare * 100:.1f}%"
    low, high = min(r.vs_bare_runs) * 100, max(r.vs_bare_runs) * 100
    return f"{r.vs_bare * 100:.1f}% ({low:.0f}-{high:.0f})"


def print_results(runs: list[Run], cal: Calibration) -> None:
    """The final tables."""
    headers = ["processes", "workers", "jobs", "wall s", "jobs/s", "speedup", "ideal",
               "efficiency", "overhead ms/job", "p50 ms", "p99 ms", "bare jobs/s",
               "vs bare"]  # fmt: skip
    rows = [
        [r.processes, r.workers, r.jobs, r.wall_s, r.jobs_per_s, r.speedup, r.ideal,
         f"{r.efficiency * 100:.1f}%", r.overhead_ms, r.p50_ms, r.p99_ms, r.bare_jobs_per_s,
         _vs_bare(r)]
        for r in runs
    ]  # fmt: skip
    _common.print_table(headers, rows)
    print(
        f"compute per job: {cal.compute_ms:.2f} ms of CPU (burn({cal.iterations:,}) here); "
        "overhead = wall x processes / jobs - a job's time in the bare run (or compute "
        "without one); latency = submit to result with "
        "--window jobs in flight; bare = the same burn calls in plain processes, no queue; with "
        "--repeat, each row is the run of median ratio to bare, the range of all in brackets"
    )
    print()
    print("CPU time per job by process (ms), and what the rest of the machine used meanwhile:")
    _common.print_table(
        ["processes", "workers", *[f"{g} ms" for g in CPU_GROUPS], "sum ms",
         "children busy", "other load (cores)"],
        [
            [r.processes, r.workers, *[r.cpu_ms_per_job.get(g, float("nan")) for g in CPU_GROUPS],
             sum(r.cpu_ms_per_job.values()), f"{children_busy(r) * 100:.1f}%", r.others_cores]
            for r in runs
        ],
    )  # fmt: skip
    print(
        "children busy: the children's CPU time over wall time x processes, what bare processes "
        "reach by construction; unlike the ratio to bare runs made at other moments, it does "
        "not move with the machine's speed"
    )
    print()
    print("Wake-ups per job by process (voluntary context switches, all threads):")
    _common.print_table(
        ["processes", "workers", *CPU_GROUPS],
        [[r.processes, r.workers, *[r.wakeups_per_job.get(g, float("nan")) for g in CPU_GROUPS]]
         for r in runs],
    )  # fmt: skip
    print(
        "a wake-up costs the woken process CPU of its own, whatever the work it wakes for (0.1 "
        "to 0.4 ms on the project's 2-core VM, the more the longer it idled before): with "
        "CPU-bound jobs, a large part of what the supervisor, the producer and Redis use per job"
    )


if __name__ == "__main__":
    sys.exit(main())
