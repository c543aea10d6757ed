"""Costs as the backlog grows: no-op throughput, Redis and supervisor CPU per job, ``info()``
and Redis memory with 1,000 and with 1,000,000 jobs pending.

For each backlog B: a fresh queue gets B no-op jobs (``submit_many`` in batches), a worker
starts, and a producer keeps between B and 2B jobs pending (at most B + 10,000) by topping the
queue up as jobs complete.
After a warm-up, the next ``--window`` completions are timed (the queue's ``completed``
counter, read with one ``HGET``), with the CPU that Redis and the supervisor used meanwhile.

Run ``python benchmarks/backlog.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import bench_tasks
import redis as sync_redis

from aioqueue import Queue

BATCH = 10_000  # jobs per submit_many while filling or topping up
WARMUP = 2_000  # completions before the timed window


async def _completed(queue: Queue) -> int:
    return int(await queue.redis.hget(queue.keys.stats, "completed") or 0)


def _redis_cpu(url: str) -> float:
    info = sync_redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _redis_mib(url: str) -> float:
    return float(sync_redis.Redis.from_url(url).info("memory")["used_memory"]) / 2**20


async def one(
    target: _common.RedisTarget, backlog: int, window: int, processes: int, log_dir: Path
) -> dict[str, Any]:
    """Fill, serve, time ``window`` completions at a steady ``backlog``."""
    async with bench_tasks.fresh_queue(target, f"backlog-{backlog}") as queue:
        submitted = 0
        t0 = time.perf_counter()
        while submitted < backlog:
            n = min(BATCH, backlog - submitted)
            await queue.submit_many(bench_tasks.noop, [()] * n)
            submitted += n
        fill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        await queue.info()
        info_ms = (time.perf_counter() - t0) * 1000
        memory = _redis_mib(target.url)
        stop = asyncio.Event()

        async def top_up() -> None:
            nonlocal submitted
            while not stop.is_set():
                if submitted - await _completed(queue) < backlog:
                    n = min(BATCH, backlog)  # so the backlog stays within B and 2B
                    await queue.submit_many(bench_tasks.noop, [()] * n)
                    submitted += n
                else:
                    await asyncio.sleep(0.01)

        log = log_dir / f"backlog-{backlog}.log"
        with bench_tasks.worker(queue, processes, log) as worker:
            producer = asyncio.create_task(top_up())
            try:
                await _common.wait_until(
                    lambda: _at_least(queue, WARMUP), 120, "warm-up", check=worker.check_alive
                )
                c0, t0 = await _completed(queue), time.perf_counter()
                redis0 = _redis_cpu(target.url)
                sup0 = _common.proc_stat(worker.pid)
                await _common.wait_until(
                    lambda: _at_least(queue, c0 + window), 300, f"{window} completions",
                    check=worker.check_alive,
                )  # fmt: skip
                c1, t1 = await _completed(queue), time.perf_counter()
                redis1 = _redis_cpu(target.url)
                sup1 = _common.proc_stat(worker.pid)
            finally:
                stop.set()
                await producer
    jobs = c1 - c0
    sup_s = sup1.cpu_s - sup0.cpu_s if sup0 is not None and sup1 is not None else float("nan")
    return {
        "backlog": backlog,
        "fill_per_s": backlog / fill_s,
        "jobs": jobs,
        "seconds": t1 - t0,
        "per_s": jobs / (t1 - t0),
        "redis_us": (redis1 - redis0) / jobs * 1e6,
        "supervisor_us": sup_s / jobs * 1e6,
        "info_ms": info_ms,
        "redis_mib": memory,
    }


async def _at_least(queue: Queue, n: int) -> bool:
    return await _completed(queue) >= n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", help="use this Redis (default: start a private redis-server)")
    p.add_argument(
        "--backlogs", default="1000,1000000", help="pending jobs to hold (default: 1000,1000000)"
    )
    p.add_argument("--window", type=int, default=50_000, help="completions timed (default 50k)")
    p.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--out", type=Path, help=_common.out_help("backlog"))
    p.add_argument("--quick", action="store_true", help="smoke run: small backlogs and window")
    args = p.parse_args(argv)
    if args.quick:
        args.backlogs, args.window = "1000,20000", 5_000
    return args


async def measure(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The machine, and a row per backlog."""
    backlogs = [int(b) for b in args.backlogs.split(",")]
    rows = []
    with (
        _common.redis_url_or_private(args.redis_url) as target,
        tempfile.TemporaryDirectory() as logs,
    ):
        machine = _common.machine_info(target.url)
        print("machine:", _common.describe_machine(machine))
        for backlog in backlogs:
            row = await one(target, backlog, args.window, args.processes, Path(logs))
            rows.append(row)
            print(f"  backlog {backlog:,}: {row['per_s']:,.0f} jobs/s", file=sys.stderr)
    return machine, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = _common.out_dir(args.out, args.quick)
    with _common.report_to(out, "backlog") as report:
        load = _common.OtherLoad().look(0.1 if args.quick else 1.0)
        load.start()
        machine, rows = _common.run_async(measure(args))
        load.stop()
        first = rows[0]["per_s"]
        _common.print_table(
            ["pending", "jobs/s", "of the first", "Redis us/job", "supervisor us/job",
             "info() ms", "Redis MiB", "fill jobs/s"],
            [[f"{r['backlog']:,}", f"{r['per_s']:,.0f}", f"{r['per_s'] / first:.0%}",
              f"{r['redis_us']:.1f}", f"{r['supervisor_us']:.1f}", f"{r['info_ms']:.2f}",
              f"{r['redis_mib']:,.0f}", f"{r['fill_per_s']:,.0f}"] for r in rows],
        )  # fmt: skip
        print(
            f"{args.window:,} completions timed per row after {WARMUP:,}, {args.processes} "
            "worker processes, defaults; the producer tops the queue up to keep the backlog"
        )
        print(load.verdict())
        data = {"benchmark": "backlog", "machine": machine, "window": args.window,
                "processes": args.processes, "rows": rows,
                "other_load": load.as_dict()}  # fmt: skip
        _common.write_json(out / "backlog.json", data)
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
