"""aioqueue's own costs, measured with no-op jobs: enqueue, end to end, processing, latency, memory.

What it runs (every queue is fresh, so its counters start at zero):

* floor: ``submit`` of a job whose de-duplication key exists already, awaited one at a time: the
  whole submit path and its one script round trip, with nothing written.
* enqueue, no worker running: N no-op jobs (a) one awaited ``submit`` at a time, (b) from 64
  coroutines submitting concurrently, (c) in one ``submit_many``.
* end to end, with a worker of 1 and of 2 processes: the same three modes, timed from the first
  submit until the queue's ``completed`` counter shows all N jobs recorded.
* processing: N jobs enqueued first, then a worker started; timed from the first completed job
  the counter shows to the last (the same run including start-up is reported too).
* latency, submit to result: on an idle queue (one job at a time) and under load (64 coroutines,
  each submitting a job and awaiting its result, again and again).
* memory: VmRSS of the supervisor and of each child after the runs above.

Run ``python benchmarks/throughput.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common
import bench_tasks
from _common import RedisTarget

from aioqueue import Queue

CONCURRENCY = 64
MODES = ("sequential", "concurrent", "bulk")
MODE_TEXT = {
    "sequential": "await submit() one at a time",
    "concurrent": f"{CONCURRENCY} coroutines submitting",
    "bulk": "one submit_many()",
}


@dataclass
class Row:
    """One measurement: ``n`` operations in ``seconds``."""

    section: str
    case: str
    processes: int
    n: int
    seconds: float
    per_s: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sizes:
    """How many operations each part runs."""

    floor: int
    enqueue: int
    e2e: int
    processing: int
    idle: int
    load: int
    long_run: int

    @classmethod
    def of(cls, quick: bool, scale: float) -> Sizes:
        """The default sizes, times ``scale``; ``quick`` makes them tiny."""
        base = (
            cls(100, 100, 100, 200, 20, 100, 1000)
            if quick
            else cls(5000, 5000, 3000, 10000, 500, 5000, 100_000)
        )
        return cls(*(max(int(v * scale), 10) for v in asdict(base).values()))


PREFETCH = 64  # the documented setting for short jobs


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


# -- submitting ------------------------------------------------------------------------------


class Cpu:
    """CPU seconds used between :meth:`start` and :meth:`per_job` by the worker's supervisor and
    children, by Redis (when the benchmark started it) and by this producer, per job in µs."""

    def __init__(self, worker_pid: int, redis: RedisTarget) -> None:
        self.worker_pid = worker_pid
        self.redis_pid = redis.pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        sup = _common.proc_stat(self.worker_pid)
        kids = [_common.proc_stat(pid) for pid in _common.child_pids(self.worker_pid)]
        red = _common.proc_stat(self.redis_pid) if self.redis_pid else None
        return (
            sup.cpu_s if sup else float("nan"),
            sum(k.cpu_s for k in kids if k is not None),
            red.cpu_s if red else float("nan"),
            time.process_time(),
        )

    def start(self) -> Cpu:
        self._start = self._sample()
        return self

    def per_job(self, n: int) -> dict[str, float]:
        end = self._sample()
        names = ("supervisor_us", "children_us", "redis_us", "producer_us")
        spans = zip(names, self._start, end, strict=True)
        return {k: (b - a) / max(n, 1) * 1e6 for k, a, b in spans}


async def submit_jobs(queue: Queue, mode: str, n: int) -> float:
    """Submit ``n`` no-op jobs in ``mode``; returns the seconds it took."""
    t0 = time.perf_counter()
    if mode == "sequential":
        for _ in range(n):
            await queue.submit(bench_tasks.noop)
    elif mode == "concurrent":
        await _common.in_lanes(lambda: queue.submit(bench_tasks.noop), n, CONCURRENCY)
    elif mode == "bulk":
        await queue.submit_many(bench_tasks.noop, [()] * n)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return time.perf_counter() - t0


async def completed(queue: Queue) -> int:
    """The queue's ``completed`` counter."""
    return (await queue.info()).counters.get("completed", 0)


async def wait_completed(
    queue: Queue, target: int, timeout: float, check: Callable[[], None]
) -> None:
    """Poll the counters until ``completed`` reaches ``target``."""

    async def done() -> bool:
        return await completed(queue) >= target

    await _common.wait_until(
        done, timeout, f"{target} completed jobs on {queue.name}", interval=0.002, check=check
    )


# -- the parts -------------------------------------------------------------------------------


async def floor(redis: RedisTarget, n: int) -> Row:
    """Rate of submits that write nothing: the same de-duplication key again and again."""
    async with bench_tasks.fresh_queue(redis, "tp-floor") as queue:
        once = queue.options(key="floor")
        await once.submit(bench_tasks.noop)
        t0 = time.perf_counter()
        for _ in range(n):
            job = await once.submit(bench_tasks.noop)
        seconds = time.perf_counter() - t0
    if job.created:
        raise RuntimeError("the floor's submit created a job: it was not a no-op")
    return Row("floor", "submit of an existing key, no-op repeat", 0, n, seconds, _rate(n, seconds))


async def enqueue_only(redis: RedisTarget, n: int) -> list[Row]:
    """Enqueue rate of each mode, with no worker running."""
    rows = []
    for mode in MODES:
        async with bench_tasks.fresh_queue(redis, f"tp-enq-{mode}") as queue:
            seconds = await submit_jobs(queue, mode, n)
            pending = (await queue.info()).pending
        if pending != n:
            raise RuntimeError(f"{mode}: {pending} jobs pending after submitting {n}")
        rows.append(Row("enqueue", MODE_TEXT[mode], 0, n, seconds, _rate(n, seconds)))
    return rows


async def with_worker(
    redis: RedisTarget, processes: int, sizes: Sizes, timeout: float, log_dir: Path
) -> tuple[list[Row], dict[str, Any]]:
    """End to end in each mode, then latency idle and under load, then memory: one worker."""
    rows: list[Row] = []
    async with bench_tasks.fresh_queue(redis, f"tp-e2e-p{processes}") as queue:
        log = log_dir / f"e2e-p{processes}.log"
        with bench_tasks.worker(queue, processes, log) as worker:

            async def registered() -> bool:
                return (await queue.info()).workers >= 1

            await _common.wait_until(
                registered, timeout, "the worker to register", check=worker.check_alive
            )
            done = 0
            cpu = Cpu(worker.pid, redis)
            for mode in MODES:
                t0 = time.perf_counter()
                cpu.start()
                submit_s = await submit_jobs(queue, mode, sizes.e2e)
                done += sizes.e2e
                await wait_completed(queue, done, timeout, worker.check_alive)
                seconds = time.perf_counter() - t0
                rows.append(
                    Row("end to end", MODE_TEXT[mode], processes, sizes.e2e, seconds,
                        _rate(sizes.e2e, seconds),
                        extra={"submit_s": submit_s, "cpu": cpu.per_job(sizes.e2e)})
                )  # fmt: skip

            idle = await latencies(queue, sizes.idle, 1, timeout, worker.check_alive)
            rows.append(_latency_row("idle queue, one job at a time", processes, idle))
            cpu.start()
            loaded = await latencies(queue, sizes.load, CONCURRENCY, timeout, worker.check_alive)
            rows.append(
                _latency_row(f"under load, {CONCURRENCY} clients submit+await", processes, loaded)
            )
            rows[-1].extra["cpu"] = cpu.per_job(sizes.load)
            memory = worker.memory()
    return rows, memory


def _latency_row(case: str, processes: int, lat: tuple[float, list[float]]) -> Row:
    seconds, samples = lat
    ms = [s * 1000 for s in samples]
    return Row(
        "latency",
        case,
        processes,
        len(samples),
        seconds,
        _rate(len(samples), seconds),
        p50_ms=_common.percentile(ms, 50),
        p99_ms=_common.percentile(ms, 99),
        extra={"mean_ms": sum(ms) / len(ms) if ms else float("nan")},
    )


async def latencies(
    queue: Queue, n: int, clients: int, timeout: float, check: Callable[[], None]
) -> tuple[float, list[float]]:
    """``clients`` coroutines, each submitting a no-op and awaiting its result, ``n`` in all."""
    samples: list[float] = []
    remaining = n
    deadline = time.monotonic() + timeout

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            job = await queue.submit(bench_tasks.noop)
            await job.result(timeout=max(deadline - time.monotonic(), 0.001))
            samples.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await _common.watch(asyncio.gather(*(lane() for _ in range(min(clients, n)))), check)
    return time.perf_counter() - t0, samples


async def processing(
    redis: RedisTarget, processes: int, n: int, timeout: float, log_dir: Path, prefetch: int = 0
) -> Row:
    """Enqueue ``n`` no-op jobs, then start a worker and time it through them."""
    async with bench_tasks.fresh_queue(redis, f"tp-proc-p{processes}-f{prefetch}") as queue:
        await submit_jobs(queue, "bulk", n)
        log = log_dir / f"proc-p{processes}-f{prefetch}.log"
        flags = ["--prefetch", str(prefetch)] if prefetch else []
        with bench_tasks.worker(queue, processes, log, flags) as worker:
            t_start = time.perf_counter()
            first: tuple[float, int] | None = None

            async def all_done() -> bool:
                nonlocal first
                c = await completed(queue)
                if c > 0 and first is None:
                    first = (time.perf_counter(), c)
                return c >= n

            await _common.wait_until(
                all_done, timeout, f"{n} completed jobs", interval=0.002, check=worker.check_alive
            )
            t_end = time.perf_counter()
    assert first is not None
    t_first, c_first = first
    seconds = t_end - t_first
    return Row(
        "processing",
        "pre-enqueued, from first completion"
        + (f", --prefetch {prefetch}" if prefetch else ", defaults"),
        processes,
        n - c_first,
        seconds,
        _rate(n - c_first, seconds),
        extra={"with_startup_s": t_end - t_start, "with_startup_per_s": _rate(n, t_end - t_start)},
    )


# -- report ----------------------------------------------------------------------------------


def print_report(rows: list[Row], memory: dict[int, dict[str, Any]], floor_row: Row) -> None:
    """The tables."""
    _common.print_table(
        ["section", "case", "processes", "n", "seconds", "per second", "p50 ms", "p99 ms"],
        [
            [r.section, r.case, r.processes if r.processes else "-", r.n, r.seconds, r.per_s,
             r.p50_ms, r.p99_ms]
            for r in rows
        ],
    )  # fmt: skip
    seq = next(r for r in rows if r.section == "enqueue" and r.case == MODE_TEXT["sequential"])
    print(
        f"\nfloor: {floor_row.per_s:,.0f} no-op submits/s; one awaited submit() at a time "
        f"reaches {seq.per_s:,.0f} jobs/s = {seq.per_s / floor_row.per_s * 100:.0f}% of it "
        f"(ratio {seq.per_s / floor_row.per_s:.2f})"
    )
    for r in rows:
        if r.section == "processing":
            print(
                f"processing with {r.processes} process(es), worker start-up included: "
                f"{r.extra['with_startup_s']:.2f} s, {r.extra['with_startup_per_s']:,.0f} jobs/s"
            )
    print("\nCPU per job (µs), the whole section's run:")
    _common.print_table(
        ["section", "case", "processes", "supervisor", "children", "redis", "producer"],
        [
            [r.section, r.case, r.processes, c["supervisor_us"], c["children_us"],
             c["redis_us"], c["producer_us"]]
            for r in rows if (c := r.extra.get("cpu"))
        ],
    )  # fmt: skip
    print("\nmemory after the runs (VmRSS):")
    _common.print_table(
        ["processes", "supervisor MiB", "children MiB (each)", "children MiB (sum)", "total MiB"],
        [
            [p, m["supervisor_rss_kib"] / 1024,
             ", ".join(f"{c['rss_kib'] / 1024:.1f}" for c in m["children"]),
             m["children_rss_kib"] / 1024,
             (m["supervisor_rss_kib"] + m["children_rss_kib"]) / 1024]
            for p, m in sorted(memory.items())
        ],
    )  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description="aioqueue's own costs, measured with no-op jobs.")
    p.add_argument("--redis-url", help="use this Redis (default: start a private redis-server)")
    p.add_argument(
        "--processes",
        default=None,
        help="worker process counts for the end-to-end and processing runs; the long run uses "
        "the largest (default 1,2; 1 with --quick)",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every job count by this (default 1)"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="bound on each wait (default 120 s)"
    )
    p.add_argument(
        "--long-run",
        type=int,
        default=None,
        help="jobs in the long run that follows the supervisor's memory (default 100,000)",
    )
    p.add_argument("--out", type=Path, default=None, help=_common.out_help("throughput"))
    p.add_argument("--quick", action="store_true", help="tiny job counts: a smoke test")
    args = p.parse_args(argv)
    args.out = _common.out_dir(args.out, args.quick)
    args.processes = args.processes or ("1" if args.quick else "1,2")
    try:
        args.processes = sorted({int(x) for x in args.processes.split(",") if x.strip()})
    except ValueError:
        p.error(f"--processes: expected e.g. 1,2 — got {args.processes!r}")
    if not args.processes or args.processes[0] < 1:
        p.error("--processes: counts must be >= 1")
    if args.scale <= 0 or args.timeout <= 0:
        p.error("--scale and --timeout must be > 0")
    return args


async def run_all(
    redis: RedisTarget, args: argparse.Namespace, sizes: Sizes, log_dir: Path
) -> tuple[Row, list[Row], dict[int, dict[str, Any]], dict[str, Any]]:
    """Every part, in order."""
    floor_row = await floor(redis, sizes.floor)
    print(f"  floor: {floor_row.per_s:,.0f} no-op submits/s", flush=True)
    rows = await enqueue_only(redis, sizes.enqueue)
    print("  enqueue: " + ", ".join(f"{r.per_s:,.0f}/s" for r in rows), flush=True)
    memory: dict[int, dict[str, Any]] = {}
    for n in args.processes:
        part, memory[n] = await with_worker(redis, n, sizes, args.timeout, log_dir)
        rows += part
        print(f"  end to end and latency with {n} process(es): done", flush=True)
    for prefetch in (0, PREFETCH):
        for n in args.processes:
            rows.append(
                await processing(redis, n, sizes.processing, args.timeout, log_dir, prefetch)
            )
            print(f"  processing: {rows[-1].case}, {n} process(es): {rows[-1].per_s:,.0f} jobs/s")
    long_run = await long_run_rss(redis, max(args.processes), sizes.long_run, args.timeout, log_dir)
    return floor_row, rows, memory, long_run


async def long_run_rss(
    redis: RedisTarget, processes: int, n: int, timeout: float, log_dir: Path
) -> dict[str, Any]:
    """Run ``n`` no-op jobs through a worker; the supervisor's RSS after 10,000 and at the end."""
    samples: list[tuple[int, int]] = []
    async with bench_tasks.fresh_queue(redis, "tp-rss") as queue:
        flags = ["--prefetch", str(PREFETCH)]
        with bench_tasks.worker(queue, processes, log_dir / "rss.log", flags) as worker:
            for i in range(0, n, 10_000):
                await submit_jobs(queue, "bulk", min(10_000, n - i))
                done = min(i + 10_000, n)

                async def caught_up(done: int = done) -> bool:
                    return await completed(queue) >= done

                await _common.wait_until(caught_up, timeout, "jobs", check=worker.check_alive)
                samples.append((done, worker.memory()["supervisor_rss_kib"]))
    first = samples[0][1] if samples else 0
    return {
        "jobs": n,
        "processes": processes,
        "supervisor_rss_kib_first": first,
        "supervisor_rss_kib_last": samples[-1][1] if samples else 0,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every part and report."""
    args = parse_args(argv)
    with _common.report_to(args.out, "throughput") as report:
        measure(args)
        print(f"report: {report}")
    return 0


def measure(args: argparse.Namespace) -> None:
    """What :func:`main` does, its output going to the report."""
    sizes = Sizes.of(args.quick, args.scale)
    if args.long_run:
        sizes.long_run = args.long_run
    started = time.perf_counter()
    load = _common.OtherLoad().look(0.1 if args.quick else 1.0)
    with (
        _common.redis_url_or_private(args.redis_url) as redis,
        tempfile.TemporaryDirectory(prefix="aioq-throughput-") as tmp,
    ):
        load.start()
        machine = _common.machine_info(redis.url)
        print(f"machine: {_common.describe_machine(machine)}")
        print(f"redis: {'private redis-server' if redis.private else redis.url}")
        print(f"sizes: {asdict(sizes)}")
        floor_row, rows, memory, long_run = _common.run_async(
            run_all(redis, args, sizes, Path(tmp))
        )
        load.stop()
    print()
    print_report(rows, memory, floor_row)
    first, last = long_run["supervisor_rss_kib_first"], long_run["supervisor_rss_kib_last"]
    print(
        f"long run: {long_run['jobs']:,} no-op jobs through {long_run['processes']} process(es) "
        f"(--prefetch {PREFETCH}); "
        f"supervisor RSS {first / 1024:.1f} MiB after the first 10,000, "
        f"{last / 1024:.1f} MiB at the end"
    )
    samples = long_run["samples"]
    step = max(1, len(samples) // 10)
    print(
        "  supervisor RSS along the way (jobs: MiB): "
        + ", ".join(f"{n:,}: {kib / 1024:.2f}" for n, kib in samples[step - 1 :: step])
    )
    print()
    print(load.verdict())
    data = {
        "benchmark": "throughput",
        "machine": machine,
        "sizes": asdict(sizes),
        "other_load": load.as_dict(),
        "floor": asdict(floor_row),
        "rows": [asdict(r) for r in rows],
        "memory": {str(k): v for k, v in memory.items()},
        "long_run": long_run,
    }
    print(f"json: {_common.write_json(args.out / 'throughput.json', data)}")
    print(f"total time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
