"""Periodic jobs: ticks computed right (cron in a time zone, intervals), misfire policies, the
tick script's once-in-all, and real workers firing each tick exactly once through a SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import BinaryIO
from zoneinfo import ZoneInfo

import pytest
import redis

import aioqueue
from aioqueue import Queue
from aioqueue.admin.info import queue_info
from aioqueue.admin.session import Session
from aioqueue.options import NO_OPTIONS
from aioqueue.schedule import Schedule
from aioqueue.scripts import NewJob
from aioqueue.worker.schedules import fire_due
from tests import schedule_tasks, tasks
from tests._async import eventually
from tests.conftest import FAST, ROOT

pytestmark = pytest.mark.anyio

BERLIN = ZoneInfo("Europe/Berlin")


def ms(*args: int, tz: ZoneInfo = BERLIN) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def test_cron_ticks_follow_the_time_zone_through_daylight_saving() -> None:
    """``0 3 * * *`` in Berlin is 03:00 local: 01:00 UTC in summer, 02:00 UTC in winter."""
    s = Schedule("nightly", "t", cron="0 3 * * *", tz="Europe/Berlin")
    summer = ms(2026, 10, 24, 12, 0)  # CEST
    assert s.after(summer) == ms(2026, 10, 25, 3, 0)  # the night the clocks go back
    assert s.after(ms(2026, 10, 25, 3, 0)) == ms(2026, 10, 26, 3, 0)
    assert s.at_or_before(ms(2026, 10, 26, 3, 0)) == ms(2026, 10, 26, 3, 0)
    assert s.at_or_before(ms(2026, 10, 26, 2, 59)) == ms(2026, 10, 25, 3, 0)
    assert s.describe() == "cron 0 3 * * * (Europe/Berlin), misfire once"


def test_intervals_count_from_the_epoch() -> None:
    s = Schedule("often", "t", every=60)
    assert (s.after(0), s.after(59_999), s.after(60_000)) == (60_000, 60_000, 120_000)
    assert s.at_or_before(119_999) == 60_000


def test_misfire_policies() -> None:
    """Missed ticks (last fired at 60 s, now 300.5 s): skip fires none, once the latest, all
    each of them up to ``catch_up``; a tick due now fires under every policy; a new schedule
    starts with its next tick."""

    def plan(misfire: str, now: int, last: int | None = 60_000, catch_up: int = 100) -> object:
        return Schedule("s", "t", every=60, misfire=misfire, catch_up=catch_up).plan(last, now)  # type: ignore[arg-type]

    late = 300_000 + 40_000  # 40 s after the 300 s tick: missed (grace 30 s)
    assert plan("skip", late) == ([], 300_000)
    assert plan("once", late) == ([300_000], None)
    assert plan("all", late) == ([120_000, 180_000, 240_000, 300_000], None)
    assert plan("all", late, catch_up=2) == ([240_000, 300_000], None)
    assert plan("skip", 300_005) == ([300_000], None)  # due now, not missed
    assert plan("once", 300_005, last=300_000) == ([], None)
    assert plan("once", 300_005, last=None) == ([], 300_000)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"every": 1, "cron": "* * * * *"}, "give exactly one of cron= and every="),
        ({}, "give exactly one of cron= and every="),
        ({"every": 0}, "every must be > 0 seconds, got 0"),
        ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
        ({"every": 1, "tz": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({"every": 1, "misfire": "never"}, "misfire must be one of skip, once, all"),
        ({"every": 1, "catch_up": 0}, "catch_up must be an int >= 1, got 0"),
    ],
)
def test_bad_schedules_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(aioqueue.InvalidOptions, match=re.escape(message)):
        Schedule("s", "t", **kw)  # type: ignore[arg-type]


def test_declaring_checks_the_task_and_its_arguments() -> None:
    """``@queue.task(cron=...)`` declares a schedule without arguments; ``queue.schedule``
    checks the task, its arguments and the name."""
    q = Queue("decl")
    q.task(cron="*/5 * * * *", tz="Europe/Berlin")(tasks.noop)
    [(name, s)] = q.schedules.items()
    assert (name, s.task, s.cron, s.tz, s.args) == (
        "tests.tasks.noop", "tests.tasks.noop", "*/5 * * * *", "Europe/Berlin", ()
    )  # fmt: skip
    q.task(tasks.add)
    q.schedule(tasks.add, every=10, args=(1, 2))
    with pytest.raises(aioqueue.InvalidOptions, match="has a schedule named"):
        q.schedule(tasks.add, every=10, args=(1, 2))
    with pytest.raises(aioqueue.ArgumentError):
        q.schedule(tasks.add, every=10, args=("x",), name="bad")
    with pytest.raises(aioqueue.UnknownTask):
        q.schedule(tasks.fail, every=10)


async def test_each_tick_fires_once_whoever_sends_it(redis_url: str) -> None:
    """Two workers' firings of the same due tick submit one job; missed ticks follow the
    policy; the next tick and what it runs are recorded for ``aioqueue info``."""
    async with Queue("fire", redis_url) as q:
        q.task(tasks.add)
        s = q.schedule(tasks.add, every=3600, args=(1, 2), misfire="all", catch_up=3)
        now = int((await q.redis.time())[0]) * 1000
        await q.redis.hset(q.keys.schedules, s.name, s.at_or_before(now) - 5 * 3600_000)
        await fire_due(q, [s])
        await fire_due(q, [s])  # another worker, same moment: nothing more
        assert await q.redis.zcard(q.keys.pending) == 3
        tick = s.after(now)  # one tick fired by two calls: the first, re-sent, and another
        p = q._prepare(s.task, q.tasks[s.task], s.args, s.kwargs, NO_OPTIONS)
        job = NewJob(p.id, p.data, p.priority, p.delay_ms)
        assert await q.scripts.tick(s.name, tick, job) is True
        assert await q.scripts.tick(s.name, tick, job) is True  # a re-send: its first answer
        other = NewJob(p.id + "x", p.data)
        assert await q.scripts.tick(s.name, tick, other) is False
        assert await q.redis.zcard(q.keys.pending) == 4
        await q.redis.hdel(q.keys.schedules, s.name)
        await q.redis.hset(q.keys.schedules, s.name, s.at_or_before(now))
        [row] = (await q.scripts.overview()).schedules
        assert (row.name, row.last_ms) == (s.name, s.at_or_before(now))
        assert row.next_ms == s.after(now) and "every 3600 s, misfire all" in row.about
    session = Session(redis_url)  # what `aioqueue info` and the HTTP API show
    try:
        [shown] = (await queue_info(session, "fire"))["schedules"]
    finally:
        await session.aclose()
    assert shown["next_tick"] == row.next_ms / 1000 and shown["runs"] == row.about


@pytest.mark.chaos  # a fault scenario: runs with the fault suite
async def test_workers_fire_every_tick_exactly_once_through_a_sigkill(
    redis_url: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """Two real workers fire the same every-0.3 s schedule: each tick's job is submitted once
    (the workers' logs name every tick they submitted), with no tick missed, also after one
    worker is SIGKILLed; the jobs run."""
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    outs = [log.open("ab") for log in logs]
    procs = [_worker(redis_url, out) for out in outs]
    try:
        await eventually(lambda: len(_ticks(logs)) >= 4, 30, "four ticks")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        seen = len(_ticks(logs))
        await eventually(lambda: len(_ticks(logs)) >= seen + 4, 30, "four more ticks")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
        for out in outs:
            out.close()
    ticks = _ticks(logs)
    assert len(ticks) == len(set(ticks)), "a tick was submitted twice"
    step = int(schedule_tasks.PERIOD * 1000)
    assert sorted(ticks) == list(range(min(ticks), max(ticks) + step, step)), "a tick was missed"
    completed = int(sync_redis.hget(schedule_tasks.queue.keys.stats, "completed") or 0)
    assert completed >= len(ticks) - 2  # the last ones may still have been on their way


def _worker(url: str, out: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aioqueue", "tests.schedule_tasks:queue", "--redis-url", url,
         "--processes", "1", "--log-level", "info", *FAST],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out,
    )  # fmt: skip


def _ticks(logs: list[Path]) -> list[int]:
    text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
    return [int(t) for t in re.findall(r"schedule \S+: tick (\d+) submitted", text)]
