"""The JSON API on queues and jobs: overview, submit by task name, dispatch, job, cancel, pause."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .._redis import call_redis, to_str
from ..admin.info import queue_info
from ..admin.jobs import job_data
from ..queue import Queue
from ._body import json_object, number, only, optional_str
from .context import Context, HttpError

__all__ = ("cancel", "dispatch", "job", "pause", "queue", "queues", "resume", "submit")

MAX_MESSAGES = 10_000
MAX_DELAY = 10.0  # seconds between two dispatched submits
MAX_PACE_S = 60.0  # the longest a paced dispatch may hold its request open
SUBMIT_FIELDS = ("task", "args", "kwargs", "delay", "priority", "key", "retries", "timeout")
DISPATCH_FIELDS = ("num_messages", "delay", "work_ms", "fail_rate", "queue")


def ctx_of(request: Request) -> Context:
    """The server's :class:`Context`."""
    ctx: Context = request.app.state.ctx
    return ctx


async def _queue_data(ctx: Context, q: Queue) -> dict[str, Any]:
    """``aioqueue info --json``'s view of a queue, with its paused state and each live
    worker's jobs in flight (from the lease holders' tokens)."""
    d = await queue_info(ctx.session, q.name)
    d["paused"] = await q.paused()
    tokens = await call_redis(q.redis.hgetall(q.keys.tokens), q.redis_url)
    held: dict[str, list[str]] = {}
    for job_id, token in tokens.items():
        held.setdefault(to_str(token).rsplit(":", 1)[0], []).append(to_str(job_id))
    for w in d["workers"] + d["gone_workers"]:
        w["jobs"] = sorted(held.get(w["id"], []))
    return d


async def queues(request: Request) -> JSONResponse:
    """``GET /api/queues``: every served queue, as ``aioqueue info`` shows it."""
    ctx = ctx_of(request)
    data = [await _queue_data(ctx, ctx.queue(n)) for n in await ctx.names()]
    return JSONResponse({"queues": data, "read_only": ctx.settings.read_only})


async def queue(request: Request) -> JSONResponse:
    """``GET /api/queues/{q}``: one queue."""
    ctx = ctx_of(request)
    q = await ctx.known(request.path_params["queue"])
    return JSONResponse(await _queue_data(ctx, q))


async def submit(request: Request) -> JSONResponse:
    """``POST /api/queues/{q}/jobs``: one job by task name; 201 when created, 200 when its
    de-duplication key named an existing job."""
    ctx = ctx_of(request)
    q = await ctx.known(request.path_params["queue"])
    body = await json_object(request, '{"task": "tasks.render", "args": [40]}')
    only(body, SUBMIT_FIELDS)
    task = optional_str(body, "task")
    if task is None:
        raise HttpError(400, "task is required: the task's registered name")
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    if not isinstance(args, list):
        raise HttpError(400, f"args must be a JSON array, got {args!r}")
    if not isinstance(kwargs, dict):
        raise HttpError(400, f"kwargs must be a JSON object, got {kwargs!r}")
    _known_task(ctx, task)
    priority, retries = body.get("priority", 0), body.get("retries")
    for name, value in (("priority", priority), ("retries", retries)):
        if value is not None and type(value) is not int:
            raise HttpError(400, f"{name} must be an integer, got {value!r}")
    opts: dict[str, Any] = {
        "delay": number(body, "delay", 0.0, 0.0, 365 * 86400.0),
        "priority": priority,
        "key": optional_str(body, "key"),
        "retries": retries,
        "timeout": number(body, "timeout", 0, 0, 86400.0) or None,
    }
    handle = await q.options(**opts).submit(task, *args, **kwargs)
    data = {"id": handle.id, "created": handle.created, "queue": q.name, "task": task}
    return JSONResponse(data, status_code=201 if handle.created else 200)


def _known_task(ctx: Context, task: str) -> None:
    """:raises HttpError: 400 when tasks are configured and ``task`` is not one of them."""
    tasks = ctx.settings.tasks
    if tasks is not None and task not in tasks:
        names = ", ".join(sorted(tasks)) or "none"
        raise HttpError(400, f"unknown task {task!r}; the tasks registered: {names}")


async def dispatch(request: Request) -> JSONResponse:
    """``POST /dispatch``: ``num_messages`` demo jobs, ``delay`` seconds apart; their ids."""
    ctx = ctx_of(request)
    body = await json_object(request, '{"num_messages": 10, "delay": 0.1}')
    only(body, DISPATCH_FIELDS)
    count = body.get("num_messages")
    if type(count) is not int or not 1 <= count <= MAX_MESSAGES:
        raise HttpError(400, f"num_messages must be an int from 1 to {MAX_MESSAGES}, got {count!r}")
    delay = number(body, "delay", 0.0, 0.0, MAX_DELAY)
    if (count - 1) * delay > MAX_PACE_S:
        raise HttpError(
            400,
            f"num_messages {count} at delay {delay:g} s would hold the request open "
            f"{(count - 1) * delay:g} s; keep (num_messages - 1) * delay within {MAX_PACE_S:g} s",
        )
    work_ms = number(body, "work_ms", 10.0, 0.0, 60_000.0)
    fail_rate = number(body, "fail_rate", 0.0, 0.0, 1.0)
    names = await ctx.names()
    default = ctx.settings.dispatch_queue or (names[0] if names else "demo")
    q = await ctx.known(optional_str(body, "queue") or default)
    task = ctx.settings.dispatch_task
    _known_task(ctx, task)
    submitter = q.options()
    kwargs = {"work_ms": work_ms, "fail_rate": fail_rate}
    first = await submitter.submit(task, **kwargs)  # bad arguments fail here, before the rest
    ids = [first.id]
    if delay:
        for _ in range(count - 1):
            await asyncio.sleep(delay)  # the pace asked for: one job every `delay` seconds
            ids.append((await submitter.submit(task, **kwargs)).id)
    else:  # submitted together: they travel in one round trip per 1000
        jobs = await asyncio.gather(*(submitter.submit(task, **kwargs) for _ in range(count - 1)))
        ids += [j.id for j in jobs]
    return JSONResponse({"ids": ids, "queue": q.name, "task": task}, status_code=202)


async def job(request: Request) -> JSONResponse:
    """``GET /api/jobs/{id}?queue=q``: ``aioqueue job --json``'s view of one job."""
    ctx = ctx_of(request)
    q, row = await ctx.find(request.path_params["id"], request.query_params.get("queue"))
    return JSONResponse(job_data(q.name, request.path_params["id"], row))


async def cancel(request: Request) -> JSONResponse:
    """``DELETE /api/jobs/{id}?queue=q``: cancel a job, running or not (409 if it finished)."""
    ctx = ctx_of(request)
    job_id = request.path_params["id"]
    q, row = await ctx.find(job_id, request.query_params.get("queue"))
    [done] = await q.cancel([job_id])
    if not done:
        state = job_data(q.name, job_id, await q.scripts.job_info(job_id))["state"]
        return JSONResponse(
            {"error": f"job {job_id} not cancelled: it is {state}", "id": job_id, "state": state},
            status_code=409,
        )
    return JSONResponse({"id": job_id, "queue": q.name, "cancelled": True})


async def pause(request: Request) -> JSONResponse:
    """``POST /api/queues/{q}/pause``: workers stop claiming its jobs."""
    q = await ctx_of(request).known(request.path_params["queue"])
    await q.pause()
    return JSONResponse({"queue": q.name, "paused": await q.paused()})


async def resume(request: Request) -> JSONResponse:
    """``POST /api/queues/{q}/resume``: workers claim its jobs again."""
    q = await ctx_of(request).known(request.path_params["queue"])
    await q.resume()
    return JSONResponse({"queue": q.name, "paused": await q.paused()})
