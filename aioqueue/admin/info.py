"""``aioqueue info``: each queue's counts, oldest pending job, counters and workers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.live import Live

from ..views import Overview
from .decode import age, id_time, iso, relative, worker_host_pid
from .render import Block, Fields, Output, Table, renderable
from .session import Session

__all__ = ("info", "queue_info")


def _has_data(o: Overview) -> bool:
    return bool(
        o.pending or o.scheduled or o.running or o.dead or o.workers or o.counters or o.paused
    )


async def queue_info(session: Session, name: str) -> dict[str, Any]:
    """One queue as ``info --json`` shows it (read in one script call)."""
    q = session.queue(name)
    o = await q.scripts.overview()
    if _has_data(o):
        await session.register(q)
    now = o.now_ms / 1000
    oldest = min(o.level_heads, default=None)
    created = id_time(oldest) if oldest else None
    workers = []
    for wid, deadline_ms in sorted(o.workers.items()):
        host, pid = worker_host_pid(wid)
        about = o.about.get(wid)
        workers.append({
            "id": wid, "host": host, "pid": pid, "live": deadline_ms >= o.now_ms,
            "processes": about.processes if about else None,
            "in_flight": about.in_flight if about else None,
            "started": about.started_ms / 1000 if about and about.started_ms else None,
            "heartbeat_deadline": deadline_ms / 1000,
            "heartbeat_deadline_in_s": round((deadline_ms - o.now_ms) / 1000, 3),
        })  # fmt: skip
    return {
        "queue": name,
        "pending": o.pending,
        "scheduled": o.scheduled,
        "waiting": o.waiting,
        "running": o.running,
        "dead": o.dead,
        "paused": o.paused,
        "oldest_pending": None
        if oldest is None
        else {
            "id": oldest,
            "created": created,
            "age_s": None if created is None else round(now - created, 3),
            "exact": not o.more_levels,
        },
        "leases_past_due": o.leases_past_due,
        "counters": dict(sorted(o.counters.items())),
        "schedules": [
            {
                "name": r.name,
                "runs": r.about,
                "last_tick": None if r.last_ms is None else r.last_ms / 1000,
                "next_tick": None if r.next_ms is None else r.next_ms / 1000,
            }
            for r in o.schedules
        ],  # fmt: skip
        "last_minute": o.last_minute,
        "this_minute": o.this_minute,
        "workers": [w for w in workers if w["live"]],
        "gone_workers": [w for w in workers if not w["live"]],
        "redis_time": now,
    }


def _minute(m: dict[str, int]) -> str:
    return f"{m['completed']:,} completed, {m['failed']:,} failed"


def _when(t: float | None) -> str:
    return iso(t) or "-"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _blocks(queues: list[dict[str, Any]]) -> list[Block]:
    blocks: list[Block] = []
    for d in queues:
        oldest = d["oldest_pending"]
        when = "-"
        if oldest is not None:
            when = f"{age(oldest['age_s'])} ({oldest['id']})"
            if not oldest["exact"]:
                when += ", among the first 64 priority levels"
        pairs = [
            ("paused", "yes: workers claim nothing" if d["paused"] else "no"),
            ("pending", f"{d['pending']:,}"),
            ("scheduled", f"{d['scheduled']:,}"),
            ("waiting for others", f"{d['waiting']:,}"),
            ("running", f"{d['running']:,}"),
            ("dead", f"{d['dead']:,}"),
            ("oldest pending", when),
            ("leases past due", f"{d['leases_past_due']:,}"),
            ("last minute", _minute(d["last_minute"])),
            ("this minute", _minute(d["this_minute"]) + " so far"),
            ("counters", ", ".join(f"{k} {v:,}" for k, v in d["counters"].items()) or "-"),
        ]
        blocks.append(Fields(f"queue {d['queue']}", pairs))
        rows = [
            [w["id"], w["host"], str(w["pid"] or "?"), _count(w["processes"]),
             _count(w["in_flight"]), "live" if w["live"] else "gone",
             f"{iso(w['heartbeat_deadline'])} ({relative(w['heartbeat_deadline_in_s'])})"]
            for w in d["workers"] + d["gone_workers"]
        ]  # fmt: skip
        heads = ["id", "host", "pid", "processes", "in flight", "state", "heartbeat deadline"]
        blocks.append(Table("workers", heads, rows))
        if d["schedules"]:
            rows = [[r["name"], r["runs"], _when(r["next_tick"]), _when(r["last_tick"])]
                    for r in d["schedules"]]  # fmt: skip
            blocks.append(Table("schedules", ["name", "runs", "next tick", "last tick"], rows))
    return blocks


async def _snapshot(session: Session, names: list[str]) -> tuple[dict[str, Any], list[Block]]:
    queues = [await queue_info(session, n) for n in names]
    return {"queues": queues}, _blocks(queues)


async def info(session: Session, out: Output, names: list[str], watch: float | None) -> int:
    """Show the queues once, or every ``watch`` seconds until interrupted."""
    names = await session.names(names)
    data, blocks = await _snapshot(session, names)
    if watch is None:
        out.emit(data, blocks)
        return 0
    if not out.rich:  # a pipe or --json: one result per refresh
        while True:
            out.emit(data, blocks, compact=True)
            await asyncio.sleep(watch)
            data, blocks = await _snapshot(session, names)
    with Live(renderable(blocks), console=out.console, auto_refresh=False) as live:
        while True:
            await asyncio.sleep(watch)
            started = time.monotonic()
            data, blocks = await _snapshot(session, names)
            took = age(time.monotonic() - started)
            live.update(renderable([*blocks, Fields("", [("read in", took)])]), refresh=True)
