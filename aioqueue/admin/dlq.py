"""``aioqueue dlq list|show|retry|purge``: dead letters selected by id, task, error or all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._redis import call_redis
from ..info import DeadLetter
from ..queue import Queue
from .decode import iso
from .jobs import job_blocks, job_data
from .render import Block, Output, Table
from .session import CommandError, Session

__all__ = ("Selection", "dead_row", "dlq", "selected")


@dataclass(frozen=True)
class Selection:
    """Which dead letters: these ids, else those matching task and error type, else all."""

    ids: list[str] | None = None
    task: str | None = None
    error: str | None = None
    all: bool = False

    @property
    def empty(self) -> bool:
        return not (self.ids or self.task or self.error or self.all)

    @property
    def bulk(self) -> bool:
        """True unless the ids were given one by one."""
        return not self.ids

    def matches(self, d: DeadLetter) -> bool:
        """The final error's type is ``error``; the task is ``task``."""
        if self.ids is not None and d.id not in self.ids:
            return False
        if self.task is not None and d.task != self.task:
            return False
        return self.error is None or bool(d.errors and d.errors[-1].type == self.error)


async def selected(q: Queue, sel: Selection) -> list[DeadLetter]:
    count = await call_redis(q.redis.zcard(q.keys.dead), q.redis_url)
    if not count:
        return []
    return [d for d in await q.dead_letters(limit=count) if sel.matches(d)]


def dead_row(d: DeadLetter) -> dict[str, Any]:
    last = d.errors[-1] if d.errors else None
    return {
        "id": d.id,
        "task": d.task,
        "dead_at": d.dead_at,
        "attempts": len(d.errors),
        "last_error": None
        if last is None
        else {"type": last.type, "message": last.message, "kind": last.kind},
    }


def _short(text: str, n: int = 60) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= n else line[: n - 1] + "…"


async def dlq(
    session: Session,
    out: Output,
    action: str,
    queues: list[str] | None,
    sel: Selection,
    yes: bool,
) -> int:
    """Run one dead-letter action over the selected dead letters of each queue."""
    if sel.empty:
        if action != "list":
            raise CommandError(f"dlq {action}: select with --id ID..., --task, --error or --all")
        sel = Selection(all=True)
    names = await session.names(queues)
    picked = {n: await selected(session.queue(n), sel) for n in names}
    total = sum(len(v) for v in picked.values())
    if action == "list":
        data: dict[str, Any] = {
            "dead_letters": [{"queue": n, **dead_row(d)} for n, ds in picked.items() for d in ds]
        }
        rows = [
            [r["queue"], r["id"], r["task"], iso(r["dead_at"]) or "-", str(r["attempts"]),
             _short(f"{r['last_error']['type']}: {r['last_error']['message']}")
             if r["last_error"] else "-"]
            for r in data["dead_letters"]
        ]  # fmt: skip
        cols = ["queue", "id", "task", "dead at", "attempts", "last error"]
        out.emit(data, [Table(f"dead letters ({total})", cols, rows)])
        return 0
    if sel.ids and total < len(sel.ids):
        found = {d.id for ds in picked.values() for d in ds}
        missing = [i for i in sel.ids if i not in found]
        raise CommandError(f"not in the dead letters of {', '.join(names)}: {', '.join(missing)}")
    if action == "show":
        jobs = []
        blocks: list[Block] = []
        for n, ds in picked.items():
            q = session.queue(n)
            for d in ds:
                j = job_data(n, d.id, await q.scripts.job_info(d.id))
                jobs.append(j)
                blocks += job_blocks(j)
        out.emit({"dead_letters": jobs}, blocks or [Table("dead letters", [], [])])
        return 0
    verb = {"retry": "retry", "purge": "purge for good"}[action]
    if total and sel.bulk:
        counts = ", ".join(f"{len(v)} in {n}" for n, v in picked.items() if v)
        out.confirm(f"{verb.capitalize()} {total} dead letter(s) ({counts})?", yes)
    done: dict[str, int] = {}
    for n, ds in picked.items():
        q = session.queue(n)
        ids = [d.id for d in ds]
        if ids:
            done[n] = await (q.requeue_dead(ids) if action == "retry" else q.purge_dead(ids))
        else:
            done[n] = 0
    key = "retried" if action == "retry" else "purged"
    result: dict[str, Any] = {"selected": total, key: sum(done.values()), "queues": done}
    rows = [[n, str(len(picked[n])), str(c)] for n, c in done.items()]
    out.emit(result, [Table(f"dlq {action}", ["queue", "selected", key], rows)])
    return 0
