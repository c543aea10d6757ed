"""``aioqueue pause|resume QUEUE...``: stop or restart claims of queues; one line per queue."""

from __future__ import annotations

from typing import Any

from .render import Block, Note, Output
from .session import CommandError, Session

__all__ = ("pause",)


async def pause(session: Session, out: Output, names: list[str], paused: bool) -> int:
    """Pause (``paused``) or resume each named queue; one script call or command each. A name
    the registry doesn't know is still paused or resumed, with a warning (a typo, or a queue
    that has never been used)."""
    try:
        known: set[str] | None = set(await session.registered())
    except CommandError:  # a user confined to its queues: no check of the names
        known = None
    rows: list[dict[str, Any]] = []
    lines: list[Block] = []
    for name in names:
        q = session.queue(name)
        changed = await (q.scripts.pause() if paused else q.scripts.resume())
        o = await q.scripts.overview(max_levels=0)
        rows.append({"queue": name, "paused": o.paused, "changed": changed,
                     "pending": o.pending, "running": o.running})  # fmt: skip
        if paused:
            state = "paused" if changed else "already paused"
            tail = f"{o.pending:,} pending wait, {o.running:,} running finish"
        else:
            state = "resumed" if changed else "was not paused"
            tail = f"{o.pending:,} pending"
        lines.append(Note(f"queue {name}: {state} ({tail})"))
        if known is not None and name not in known:
            out.warn(f"queue {name!r} is not in the registry: check its name")
    out.emit({"queues": rows}, lines, compact=True)
    return 0
