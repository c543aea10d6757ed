"""``aioqueue job``, ``submit`` and ``cancel``: one job in full, a new job, cancelled jobs."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec

from .. import wire
from ..errors import AioqueueError
from ..job import status_of
from ..views import JobRow
from .decode import id_time, iso, msgpack_json, relative
from .render import Block, Fields, Note, Output, Table
from .session import CommandError, Session

__all__ = ("cancel", "job", "job_data", "parse_json_args", "submit")


def _errors(data: bytes | None) -> list[dict[str, Any]]:
    return [
        {"attempt": e.attempt, "type": e.type, "message": e.message, "kind": e.kind,
         "traceback": e.traceback}
        for e in (wire.decode_errors(data) if data else [])
    ]  # fmt: skip


def _state(row: JobRow) -> str:
    try:
        return status_of(row.state, row.outcome)
    except (msgspec.DecodeError, AioqueueError):
        return row.state


def job_data(queue: str, job_id: str, row: JobRow) -> dict[str, Any]:
    """Everything known of a job as ``job --json`` shows it."""
    env = None
    if row.data is not None:
        with contextlib.suppress(msgspec.DecodeError):
            env = wire.decode_envelope(row.data)
    outcome = None
    if row.outcome is not None:
        with contextlib.suppress(msgspec.DecodeError):
            outcome = wire.decode_outcome(row.outcome)
    state = _state(row)
    holder = row.token.rsplit(":", 1)[0] if row.token else None
    d: dict[str, Any] = {
        "id": job_id,
        "queue": queue,
        "state": state,
        "task": env.task if env else outcome.task if outcome else None,
        "args": msgpack_json(env.args) if env else None,
        "kwargs": msgpack_json(env.kwargs) if env else None,
        "options": None
        if env is None
        else {
            "priority": env.priority,
            "retries": env.retries,
            "timeout": env.timeout,
            "key": env.key,
            "result_ttl": env.result_ttl,
        },  # fmt: skip
        "created": id_time(job_id),
        "submitted": env.submitted if env and env.submitted else None,
        "attempts": row.attempts or (outcome.attempts if outcome else 0),
        "errors": _errors(row.errors),
        "holder": holder,
        "lease_deadline": row.lease_ms / 1000 if row.lease_ms is not None else None,
        "run_at": row.run_at_ms / 1000 if row.run_at_ms is not None else None,
        "dead_at": row.dead_at_ms / 1000 if row.dead_at_ms is not None else None,
        "finished": outcome.finished if outcome and outcome.finished else None,
        "result": msgpack_json(outcome.value) if outcome and outcome.ok else None,
        "error": None,
        "redis_time": row.now_ms / 1000,
    }
    d["progress"] = None
    if row.progress is not None:
        with contextlib.suppress(msgspec.DecodeError):
            p = wire.decode_progress(row.progress)
            d["progress"] = {"fraction": p.fraction, "message": p.message,
                             "state": msgspec.to_builtins(p.state, enc_hook=repr),
                             "attempt": p.attempt, "at": p.at}  # fmt: skip
    if outcome is not None and outcome.error is not None:
        e = outcome.error
        d["error"] = {"type": e.type, "message": e.message, "kind": e.kind}
    if env is None and row.data is not None:
        d["undecodable_envelope"] = True
    return d


def job_blocks(d: dict[str, Any], tracebacks: bool = True) -> list[Block]:
    """A job as text: its fields, then its attempts' errors with their tracebacks."""
    now = d["redis_time"]
    pairs = [("state", d["state"]), ("task", str(d["task"]))]
    if d["args"] is None:
        pairs.append(("arguments", "not kept: a finished job keeps only its outcome"))
    else:
        pairs += [("args", json.dumps(d["args"])), ("kwargs", json.dumps(d["kwargs"]))]
    if d["options"]:
        opts = {k: v for k, v in d["options"].items() if v not in (None, 0)}
        if opts:
            pairs.append(("options", json.dumps(opts)))
    pairs.append(("attempts", str(d["attempts"])))
    for name in ("submitted", "run_at", "lease_deadline", "dead_at", "finished"):
        if d[name] is not None:
            pairs.append((name.replace("_", " "), f"{iso(d[name])} ({relative(d[name] - now)})"))
    if d["holder"]:
        pairs.append(("held by", d["holder"]))
    if d["progress"]:
        p = d["progress"]
        done = f"{p['fraction']:.0%}" if p["fraction"] is not None else "?"
        said = f" {p['message']}" if p["message"] else ""
        pairs.append(("progress", f"{done}{said} (attempt {p['attempt']}, "
                                  f"{relative(p['at'] - now)})"))  # fmt: skip
    if d["state"] == "complete":
        pairs.append(("result", json.dumps(d["result"])))
    if d["error"]:
        pairs.append(("error", f"{d['error']['type']}: {d['error']['message']}"))
    blocks: list[Block] = [Fields(f"job {d['id']} (queue {d['queue']})", pairs)]
    rows = [[str(e["attempt"]), e["kind"], e["type"], e["message"]] for e in d["errors"]]
    blocks.append(Table("errors", ["attempt", "kind", "type", "message"], rows))
    if tracebacks:
        for e in d["errors"]:
            if e["traceback"]:
                blocks += [Note(f"attempt {e['attempt']} traceback:", "bold"),
                           Note(e["traceback"].rstrip(), "dim")]  # fmt: skip
    return blocks


async def job(session: Session, out: Output, job_id: str, queue: str | None) -> int:
    """Show one job in full."""
    q, row = await session.find(job_id, queue)
    await session.register(q)
    d = job_data(q.name, job_id, row)
    out.emit(d, job_blocks(d))
    return 0


def parse_json_args(args: list[str], kwargs: str | None) -> tuple[list[Any], dict[str, Any]]:
    """Positional arguments and ``--kwargs`` given as JSON text.

    :raises CommandError: naming the argument that is not JSON, or kwargs not an object.
    """
    out = []
    for i, text in enumerate(args, 1):
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CommandError(f"argument {i} is not JSON ({exc}): {text!r}") from None
    kw: dict[str, Any] = {}
    if kwargs is not None:
        try:
            kw = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--kwargs is not JSON ({exc}): {kwargs!r}") from None
        if not isinstance(kw, dict):
            raise CommandError(f"--kwargs must be a JSON object, got {kwargs!r}")
    return out, kw


async def submit(
    session: Session,
    out: Output,
    queue: str,
    task: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> int:
    """Submit one job by task name; print its id."""
    q = session.queue(queue)
    await session.register(q)
    handle = await q.options(**options).submit(task, *args, **kwargs)
    d = {"id": handle.id, "queue": queue, "task": task, "created": handle.created}
    text = f"submitted {handle.id} to queue {queue}"
    if not handle.created:
        text = f"job {handle.id} already holds key {options.get('key')!r} in queue {queue}"
    out.emit(d, [Note(text)])
    return 0


async def cancel(session: Session, out: Output, ids: list[str], queue: str | None) -> int:
    """Cancel jobs (running ones are stopped by their workers); exit 1 if any could not be."""
    results: dict[str, str] = {}
    for job_id in ids:
        try:
            q, row = await session.find(job_id, queue)
        except CommandError:
            results[job_id] = "unknown"
            continue
        [done] = await q.cancel([job_id])
        results[job_id] = "cancelled" if done else _state(row)
    failed = {i: r for i, r in results.items() if r != "cancelled"}
    d = {"cancelled": [i for i, r in results.items() if r == "cancelled"], "not_cancelled": failed}
    rows = [[i, r] for i, r in results.items()]
    out.emit(d, [Table("cancel", ["id", "result"], rows)])
    for i, r in failed.items():
        why = "no queue knows it" if r == "unknown" else f"it is {r}"
        out.warn(f"job {i} not cancelled: {why}")
    return 1 if failed else 0


async def cancel_where(
    session: Session, out: Output, queue: str, task: str | None, key: str | None, yes: bool
) -> int:
    """Cancel every unfinished job of a task and/or de-duplication key in one queue (asks
    first on a terminal; ``--yes`` elsewhere)."""
    what = " and ".join(f"{k} {v!r}" for k, v in (("task", task), ("key", key)) if v)
    out.confirm(f"Cancel every unfinished job of queue {queue!r} with {what}?", yes)
    ids = await session.queue(queue).cancel_where(task=task, key=key)
    out.emit({"queue": queue, "cancelled": ids},
             [Note(f"queue {queue}: {len(ids):,} job(s) with {what} cancelled")])  # fmt: skip
    return 0
