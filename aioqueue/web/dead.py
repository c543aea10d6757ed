"""The JSON API on dead letters: list by task or error, retry and purge by ids or filter."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..admin.dlq import Selection, dead_row, selected
from ._body import json_object, only, optional_str
from .api import ctx_of
from .context import HttpError

__all__ = ("dead_letters", "purge", "retry")

EXAMPLE = '{"ids": ["..."]}, {"task": "tasks.render"}, {"error": "ValueError"} or {"all": true}'


async def dead_letters(request: Request) -> JSONResponse:
    """``GET /api/queues/{q}/dead?task=&error=&limit=``: the oldest matching dead letters."""
    q = await ctx_of(request).known(request.path_params["queue"])
    p = request.query_params
    text = p.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise HttpError(400, f"limit must be an int from 1 to 10000, got {text!r}")
    sel = Selection(task=p.get("task") or None, error=p.get("error") or None, all=True)
    rows = await selected(q, sel)
    return JSONResponse(
        {
            "queue": q.name,
            "matching": len(rows),
            "dead_letters": [dead_row(d) for d in rows][: int(text)],
        }
    )


async def _selection(request: Request) -> Selection:
    body = await json_object(request, EXAMPLE)
    only(body, ("ids", "task", "error", "all"))
    ids = body.get("ids")
    if ids is not None and (
        not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids)
    ):
        raise HttpError(400, f"ids must be a non-empty array of job ids, got {ids!r}")
    every = body.get("all", False)
    if not isinstance(every, bool):
        raise HttpError(400, f"all must be true or false, got {every!r}")
    sel = Selection(ids=ids, task=optional_str(body, "task"), error=optional_str(body, "error"),
                    all=every)  # fmt: skip
    if sel.empty:
        raise HttpError(400, f"select the dead letters: {EXAMPLE}")
    return sel


async def _act(request: Request, action: str) -> JSONResponse:
    q = await ctx_of(request).known(request.path_params["queue"])
    sel = await _selection(request)
    ids = [d.id for d in await selected(q, sel)]
    done = 0
    if ids:
        done = await (q.requeue_dead(ids) if action == "retry" else q.purge_dead(ids))
    key = "retried" if action == "retry" else "purged"
    data: dict[str, Any] = {"queue": q.name, "selected": len(ids), key: done}
    if sel.ids:
        data["not_found"] = [i for i in sel.ids if i not in ids]
    return JSONResponse(data)


async def retry(request: Request) -> JSONResponse:
    """``POST /api/queues/{q}/dead/retry``: move the selected dead letters back to pending."""
    return await _act(request, "retry")


async def purge(request: Request) -> JSONResponse:
    """``POST /api/queues/{q}/dead/purge``: delete the selected dead letters for good."""
    return await _act(request, "purge")
