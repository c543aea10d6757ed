"""What per-key limits cost Redis: submit, claim and finish of plain jobs against jobs of a
concurrency group, rate-limited jobs and jobs that run after another, run through the scripts
directly (no worker), measured as Redis's own CPU time per job (INFO cpu) within one run.

    python benchmarks/limits.py [--jobs 20000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import redis

from aioqueue import Queue
from aioqueue.scripts import FinishItem, Receipt
from aioqueue.testing import RedisServer

BATCH = 100  # jobs per submit, claim and finish call


def redis_cpu(url: str) -> float:
    with redis.Redis.from_url(url) as r:
        info = r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run_case(url: str, case: str, jobs: int) -> dict[str, Any]:
    async with Queue(f"limits-{case}", url) as q:
        opts = {
            "plain": q.options(),
            "group": q.options(group="tenant", group_limit=10**9),
            "rate": q.options(rate=(10**9, 1.0), rate_key="api"),
        }.get(case, q.options())
        await q.info()  # scripts loaded
        cpu0, t0 = redis_cpu(url), time.perf_counter()
        seq = 1
        for start in range(0, jobs, BATCH):
            n = min(BATCH, jobs - start)
            if case == "after":
                parent = await q.submit("t.f")
                await q.options(after=parent).submit_many("t.f", [()] * (n - 1))
            else:
                await opts.submit_many("t.f", [()] * n)
            _, claim = await q.scripts.claim(
                n, 60_000, "w", Receipt(q.keys.receipt("c"), str(seq), 60_000)
            )
            seq += n
            items = [
                FinishItem(j.id, j.token, "ok", result=b"r", ttl_ms=60_000,
                           group="tenant" if case == "group" else "")
                for j in claim.jobs
            ]  # fmt: skip
            await q.scripts.finish(
                items, Receipt(q.keys.receipt("f"), str(seq), 60_000), (60_000, 10)
            )
            if case == "after":  # the released dependents
                _, claim = await q.scripts.claim(
                    n, 60_000, "w", Receipt(q.keys.receipt("c"), str(seq + 1), 60_000)
                )
                seq += n + 1
                items = [
                    FinishItem(j.id, j.token, "ok", result=b"r", ttl_ms=60_000) for j in claim.jobs
                ]
                await q.scripts.finish(
                    items, Receipt(q.keys.receipt("f"), str(seq), 60_000), (60_000, 10)
                )
                seq += 1
        wall, cpu = time.perf_counter() - t0, redis_cpu(url) - cpu0
        assert (await q.info()).running == 0
    return {"case": case, "jobs": jobs, "redis_us_per_job": cpu * 1e6 / jobs, "wall_s": wall}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--redis-url")
    a = ap.parse_args()
    server = None
    url = a.redis_url
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        rows = [await run_case(url, case, a.jobs) for case in ("plain", "group", "rate", "after")]
    finally:
        if server is not None:
            server.stop()
    base = rows[0]["redis_us_per_job"]
    print(f"{'case':<8} {'jobs':>7} {'Redis us/job':>13} {'vs plain':>9} {'wall s':>7}")
    for r in rows:
        print(f"{r['case']:<8} {r['jobs']:>7,} {r['redis_us_per_job']:>13.1f} "
              f"{r['redis_us_per_job'] / base:>8.2f}x {r['wall_s']:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
