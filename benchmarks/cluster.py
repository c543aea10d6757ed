"""Throughput on a Redis Cluster: one queue (one slot, one master) against several queues spread
over the masters, with the same workers and the same no-op jobs; one server for reference.

Each layout runs ``--workers`` worker subprocesses of ``--processes`` children each, split evenly
over its queues; every queue gets ``--jobs`` / queues no-op jobs, submitted by 16 coroutines per
queue while the workers run. Timed from the first submit until every queue's ``completed``
counter shows all its jobs. Queue names are picked so that the "spread" layout has one queue on
each master (their hash-tagged slots fall on different masters).

A cluster's masters only share the work when there is CPU left for them: on a machine with few
cores the workers, the producers and every redis-server share those cores, and the figures say
more about that than about Redis. The report prints the CPU model, the core count and the other
load.

    python benchmarks/cluster.py                 # a private 3-master, 3-replica cluster
    python benchmarks/cluster.py --workers 6 --jobs 20000
    python benchmarks/cluster.py --redis-url redis+cluster://host:7000   # a cluster of yours
    python benchmarks/cluster.py --quick         # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import _common
import bench_tasks

from aioqueue import Queue, connect, urls
from aioqueue.keys import Keys
from aioqueue.testing import RedisServer

sys.path.insert(0, str(_common.REPO_ROOT))
from tests.clusters import ClusterServers

LANES = 16  # submitting coroutines per queue


@dataclass
class Run:
    """One layout's run."""

    layout: str
    url_kind: str
    queues: int
    masters_used: int
    workers: int
    processes: int
    jobs: int
    submit_s: float
    seconds: float
    jobs_per_s: float


async def masters_of(url: str, names: list[str]) -> list[str]:
    """The master (host:port) holding each queue's slot; "-" for a single server."""
    client = connect.client(url, max_connections=4, connect_timeout=2, socket_timeout=5, retries=1)
    try:
        if urls.parse(url).kind != "cluster":
            return ["-" for _ in names]
        await client.initialize()
        return [client.get_node_from_key(Keys(n).jobs).name for n in names]  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def spread_names(url: str, count: int) -> list[str]:
    """``count`` fresh queue names, on as many different masters as the cluster has (up to
    ``count``)."""
    picked: dict[str, str] = {}
    spare: list[str] = []
    for _ in range(200):
        candidates = [_common.fresh_queue_name("cl") for _ in range(20)]
        for name, master in zip(candidates, await masters_of(url, candidates), strict=True):
            if master not in picked:
                picked[master] = name
            else:
                spare.append(name)
        if len(picked) >= count:
            break
    names = list(picked.values())[:count]
    return names + spare[: count - len(names)]


async def submit(producer: Queue, n: int) -> None:
    await _common.in_lanes(lambda: producer.submit(bench_tasks.noop), n, LANES)


async def run_layout(
    layout: str, url: str, names: list[str], args: argparse.Namespace, log_dir: Path
) -> Run:
    """Start the workers on ``names``, submit, wait until every job is recorded."""
    per_queue = _common.split(args.jobs, len(names))
    per_worker = _common.split(args.workers, len(names))
    producers = [bench_tasks.make_queue(n, url) for n in names]
    with ExitStack() as stack:
        workers = []
        for i, (producer, count) in enumerate(zip(producers, per_worker, strict=True)):
            for j in range(count):
                log = log_dir / f"{layout}-{i}-{j}.log"
                w = stack.enter_context(bench_tasks.worker(producer, args.processes, log))
                workers.append(w)

        def alive() -> None:
            for w in workers:
                w.check_alive()

        try:
            for p in producers:
                await p.__aenter__()

            async def registered() -> bool:
                counts = [(await p.info()).workers for p in producers]
                return counts == per_worker

            await _common.wait_until(registered, args.timeout, "the workers", check=alive)
            t0 = time.perf_counter()
            await asyncio.gather(*(submit(p, n) for p, n in zip(producers, per_queue, strict=True)))
            submit_s = time.perf_counter() - t0

            async def done() -> bool:
                infos = [await p.info() for p in producers]
                counts = [i.counters.get("completed", 0) for i in infos]
                return all(c >= n for c, n in zip(counts, per_queue, strict=True))

            await _common.wait_until(done, args.timeout, "every job", interval=0.005, check=alive)
            seconds = time.perf_counter() - t0
        finally:
            for p in producers:
                await p.aclose()
    masters = set(await masters_of(url, names))
    return Run(
        layout, urls.parse(url).kind, len(names), len(masters - {"-"}), args.workers,
        args.processes, args.jobs, round(submit_s, 3), round(seconds, 3),
        round(args.jobs / seconds, 1),
    )  # fmt: skip


async def run_all(cluster_url: str, single_url: str | None, args: argparse.Namespace) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="aioq-cluster-") as tmp:
        logs = Path(tmp)
        for _ in range(args.repeat):
            if single_url is not None:
                names = [_common.fresh_queue_name("one")]
                runs.append(
                    await run_layout("single server, 1 queue", single_url, names, args, logs)
                )
            one = await spread_names(cluster_url, 1)
            runs.append(await run_layout("cluster, 1 queue", cluster_url, one, args, logs))
            spread = await spread_names(cluster_url, args.queues)
            label = f"cluster, {args.queues} queues spread"
            runs.append(await run_layout(label, cluster_url, spread, args, logs))
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", help="a redis+cluster:// URL (default: a private cluster)")
    p.add_argument("--workers", type=int, default=3, help="worker subprocesses (default 3)")
    p.add_argument("--processes", type=int, default=1, help="children per worker (default 1)")
    p.add_argument("--queues", type=int, default=3, help="queues of the spread layout (default 3)")
    p.add_argument("--jobs", type=int, default=6000, help="no-op jobs per layout (default 6000)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each layout (default 2)")
    p.add_argument("--no-single", action="store_true", help="skip the single-server reference")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on each wait (s)")
    p.add_argument("--out", type=Path, default=None, help=_common.out_help("cluster"))
    p.add_argument("--quick", action="store_true", help="tiny job counts: a smoke test")
    args = p.parse_args(argv)
    args.out = _common.out_dir(args.out, args.quick)
    if args.quick:
        args.jobs, args.repeat = 300, 1
    if args.workers < args.queues or args.queues < 1 or args.jobs < args.queues:
        p.error("need --workers >= --queues >= 1 and --jobs >= --queues")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with _common.report_to(args.out, "cluster") as report:
        measure(args)
        print(f"report: {report}")
    return 0


def measure(args: argparse.Namespace) -> None:
    load = _common.OtherLoad().look(0.1 if args.quick else 1.0)
    with ExitStack() as stack:
        url = args.redis_url
        if url is None:
            url = stack.enter_context(ClusterServers(masters=3, replicas=1)).url
        single = None if args.no_single else stack.enter_context(RedisServer()).url
        load.start()
        first = urls.parse(url).nodes[0]
        machine = _common.machine_info(f"redis://{first[0]}:{first[1]}")
        print(f"machine: {_common.describe_machine(machine)}")
        print(f"cluster: {'private, 3 masters + 3 replicas' if args.redis_url is None else url}")
        print(f"each layout: {args.jobs} no-op jobs, {args.workers} worker(s) x "
              f"{args.processes} process(es), {LANES} submitting coroutines per queue")  # fmt: skip
        runs = _common.run_async(run_all(url, single, args))
        load.stop()
    print()
    headers = ["layout", "queues", "masters", "jobs", "submit_s", "wall_s", "jobs_per_s"]
    rows = [[r.layout, r.queues, r.masters_used or "-", r.jobs, r.submit_s, r.seconds,
             r.jobs_per_s] for r in runs]  # fmt: skip
    _common.print_table(headers, rows)
    print()
    print(load.verdict())
    data = {
        "benchmark": "cluster",
        "machine": machine,
        "other_load": load.as_dict(),
        "runs": [asdict(r) for r in runs],
    }
    print(f"json: {_common.write_json(args.out / 'cluster.json', data)}")


if __name__ == "__main__":
    sys.exit(main())
