"""Periodic jobs: a cron expression or a fixed interval, each tick submitted once in all.

A :class:`Schedule` is declared next to its task (``@queue.task(cron="*/5 * * * *")`` or
``queue.schedule(task, every=60)``). Every worker serving the queue fires its schedules: at a
tick, each worker sends the tick script, which records the tick in the queue's ``schedules``
hash and submits the job in one step, unless the hash says the tick (or a later one) was fired
already. So however many workers run, and whichever of them dies mid-way, each tick's job is
submitted exactly once, and a lost reply re-sent finds the tick fired.

Ticks missed while no worker ran are handled by the schedule's ``misfire`` policy when a
worker next looks: ``"skip"`` fires none of them (only a tick that is due now), ``"once"``
fires the latest of them once (the default), ``"all"`` fires each of them, the latest
``catch_up`` at most. A schedule seen for the first time starts with its next tick.

Cron expressions need the ``croniter`` package (``pip install 'aioqueue[cron]'``), and are read
in the schedule's time zone (``tz``, an IANA name; daylight-saving changes as croniter applies
them). Intervals are counted from the Unix epoch, so every worker agrees on the ticks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidOptions

__all__ = ("Misfire", "Schedule")

Misfire = Literal["skip", "once", "all"]
MISFIRES = ("skip", "once", "all")
GRACE_MS = 30_000  # a tick this recent is "due now", not missed (capped by the period)


@dataclass(frozen=True)
class Schedule:
    """When to submit a task, with which arguments.

    :ivar name: unique within the queue (default: the task's name).
    :ivar task: the registered task name.
    :ivar cron: a five-field cron expression, read in ``tz``; or None with ``every``.
    :ivar every: seconds between ticks, counted from the Unix epoch; or None with ``cron``.
    :ivar misfire: what to do with ticks missed while no worker ran: ``"skip"``, ``"once"``,
        ``"all"``.
    :ivar catch_up: with ``"all"``, the most missed ticks fired at once (the latest ones).
    """

    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    misfire: Misfire = "once"
    catch_up: int = 100

    def __post_init__(self) -> None:
        where = f"schedule {self.name!r}"
        if not self.name or ":" in self.name:
            raise InvalidOptions(f"{where}: a schedule's name must be non-empty, without ':'")
        if (self.cron is None) == (self.every is None):
            raise InvalidOptions(f"{where}: give exactly one of cron= and every=")
        if self.every is not None and not (
            isinstance(self.every, int | float) and math.isfinite(self.every) and self.every > 0
        ):
            raise InvalidOptions(f"{where}: every must be > 0 seconds, got {self.every!r}")
        if self.misfire not in MISFIRES:
            raise InvalidOptions(
                f"{where}: misfire must be one of {', '.join(MISFIRES)}, got {self.misfire!r}"
            )
        if not isinstance(self.catch_up, int) or self.catch_up < 1:
            raise InvalidOptions(f"{where}: catch_up must be an int >= 1, got {self.catch_up!r}")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidOptions(f"{where}: unknown time zone {self.tz!r}") from None
        if self.cron is not None and not _croniter().is_valid(self.cron):
            raise InvalidOptions(f"{where}: invalid cron expression {self.cron!r}")

    def describe(self) -> str:
        """``cron */5 * * * * (Europe/Berlin)`` or ``every 60 s``, with the misfire policy."""
        when = f"every {self.every:g} s" if self.every is not None else f"cron {self.cron}"
        if self.cron is not None and self.tz != "UTC":
            when += f" ({self.tz})"
        return f"{when}, misfire {self.misfire}"

    def after(self, t_ms: int) -> int:
        """The first tick strictly after ``t_ms`` (ms since the epoch)."""
        if self.every is not None:
            step = self.every * 1000
            return int((math.floor(t_ms / step) + 1) * step)
        it = _croniter()(self.cron, datetime.fromtimestamp(t_ms / 1000, ZoneInfo(self.tz)))
        return round(float(it.get_next(float)) * 1000)

    def at_or_before(self, t_ms: int) -> int:
        """The last tick at or before ``t_ms``."""
        if self.every is not None:
            step = self.every * 1000
            return int(math.floor(t_ms / step) * step)
        start = datetime.fromtimestamp((t_ms + 1) / 1000, ZoneInfo(self.tz))
        return round(float(_croniter()(self.cron, start).get_prev(float)) * 1000)

    def plan(self, last_ms: int | None, now_ms: int) -> tuple[list[int], int | None]:
        """What to do now, given the last tick fired (None: never) and the time.

        Returns the ticks to fire, oldest first, and a tick to record as fired without a job
        (the missed ticks skipped, or the start of a new schedule), or None.
        """
        latest = self.at_or_before(now_ms)
        if last_ms is None:
            return [], latest
        if latest <= last_ms:
            return [], None
        grace = min(GRACE_MS, self.after(latest) - latest)
        on_time = now_ms - latest <= grace
        if self.misfire == "skip":
            return ([latest], None) if on_time else ([], latest)
        if self.misfire == "once":
            return [latest], None
        due = [latest]
        while len(due) < self.catch_up:
            earlier = self.at_or_before(due[-1] - 1)
            if earlier <= last_ms:
                break
            due.append(earlier)
        return due[::-1], None


def _croniter() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError:
        raise InvalidOptions(
            "cron schedules need the croniter package: pip install 'aioqueue[cron]'"
        ) from None
    return croniter
