"""I/O-bound async tasks: jobs that each ``await asyncio.sleep(0.1)``, run through a real worker at
a few ``--async-concurrency`` settings, against the ideal of processes x concurrency / 0.1 s.

    python benchmarks/async_io.py [--jobs 10000] [--processes 2] [--concurrency 1,100,500]

Each setting gets a fresh queue and a worker of its own on a private redis-server (or
``--redis-url``). The jobs are submitted to the paused queue; the clock runs from the resume until
the queue's ``completed`` counter shows them all. A setting whose ideal run would take longer
than ``--max-seconds`` runs fewer jobs (the table says how many). CPU per job is the supervisor's
and its children's, read from ``/proc`` over the same span.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import bench_tasks
from _common import RedisTarget

from aioqueue import Call, Queue

HEADERS = (
    "processes", "async concurrency", "jobs", "seconds", "jobs/s", "ideal jobs/s", "of ideal",
    "supervisor CPU ms/job", "children CPU ms/job",
)  # fmt: skip


async def completed(queue: Queue) -> int:
    """The queue's ``completed`` counter."""
    return (await queue.info()).counters.get("completed", 0)


async def run_setting(
    redis: RedisTarget, args: argparse.Namespace, concurrency: int, log: Path
) -> dict[str, Any]:
    """One worker at ``concurrency``: its jobs/s and CPU per job."""
    ideal = args.processes * concurrency / args.sleep
    jobs = min(args.jobs, max(1, int(ideal * args.max_seconds)))
    flags = ["--async-concurrency", str(concurrency)]
    async with bench_tasks.fresh_queue(redis, f"aio-c{concurrency}") as queue:
        with bench_tasks.worker(queue, args.processes, log, flags) as worker:

            async def registered() -> bool:
                return (await queue.info()).workers >= 1

            await _common.wait_until(
                registered, args.timeout, "the worker to register", check=worker.check_alive
            )
            await queue.pause()
            for at in range(0, jobs, 5000):
                calls = [Call(args.sleep)] * min(5000, jobs - at)
                await queue.submit_many(bench_tasks.io_wait, calls)
            groups = {"supervisor": [worker.pid], "children": _common.child_pids(worker.pid)}
            meter = _common.CpuMeter(groups).start()
            started = time.perf_counter()
            await queue.resume()

            async def done() -> bool:
                return await completed(queue) >= jobs

            await _common.wait_until(
                done, args.timeout, f"{jobs} jobs", interval=0.005, check=worker.check_alive
            )
            seconds = time.perf_counter() - started
            used = meter.stop()
    rate = jobs / seconds
    return {
        "processes": args.processes,
        "async_concurrency": concurrency,
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": rate,
        "ideal_per_s": ideal,
        "of_ideal": rate / ideal,
        "supervisor_ms_per_job": used["supervisor"] * 1000 / jobs,
        "children_ms_per_job": used["children"] * 1000 / jobs,
    }


async def run_all(redis: RedisTarget, args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    rows = []
    for c in args.concurrency:
        rows.append(await run_setting(redis, args, c, logs / f"c{c}.log"))
        print(f"  async concurrency {c}: {rows[-1]['jobs_per_s']:,.0f} jobs/s", flush=True)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", help="use this Redis (default: start a private redis-server)")
    p.add_argument("--jobs", type=int, default=10_000, help="jobs per setting (default 10000)")
    p.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--concurrency", default="1,100,500", help="async concurrency settings (default 1,100,500)"
    )
    p.add_argument("--sleep", type=float, default=0.1, help="seconds each job sleeps (0.1)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="fewer jobs for a setting whose ideal run is longer than this (default 20)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each wait (300 s)")
    p.add_argument("--out", type=Path, default=None, help=_common.out_help("async_io"))
    p.add_argument("--quick", action="store_true", help="200 jobs, concurrency 1 and 50")
    args = p.parse_args(argv)
    args.out = _common.out_dir(args.out, args.quick)
    if args.quick:
        args.jobs, args.concurrency, args.max_seconds = 200, "1,50", 2.0
    try:
        args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error(f"--concurrency: expected e.g. 1,100,500, got {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1 or args.processes < 1 or args.jobs < 1:
        p.error("--concurrency, --processes and --jobs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with _common.report_to(args.out, "async_io") as report:
        load = _common.OtherLoad().look(0.1 if args.quick else 1.0)
        with (
            _common.redis_url_or_private(args.redis_url) as redis,
            tempfile.TemporaryDirectory(prefix="aioq-async-io-") as tmp,
        ):
            load.start()
            machine = _common.machine_info(redis.url)
            print(f"machine: {_common.describe_machine(machine)}")
            print(f"jobs: await asyncio.sleep({args.sleep:g}), {args.processes} processes")
            rows = _common.run_async(run_all(redis, args, Path(tmp)))
            load.stop()
        print()
        _common.print_table(
            HEADERS,
            [
                [r["processes"], r["async_concurrency"], r["jobs"], r["seconds"], r["jobs_per_s"],
                 r["ideal_per_s"], f"{r['of_ideal']:.0%}", r["supervisor_ms_per_job"],
                 r["children_ms_per_job"]]
                for r in rows
            ],
        )  # fmt: skip
        print()
        print(load.verdict())
        data = {
            "benchmark": "async_io",
            "machine": machine,
            "other_load": load.as_dict(),
            "runs": rows,
        }
        print(f"json: {_common.write_json(args.out / 'async_io.json', data)}")
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
