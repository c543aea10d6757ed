"""The API's OpenAPI 3 document, written out by hand (served at ``GET /openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ("document",)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: str, *, body: str | None = None, params: tuple[str, ...] = (),
        status: str = "200", query: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
        + [
            {"name": p, "in": "query", "required": False, "schema": {"type": "string"}}
            for p in query
        ],  # fmt: skip
        "responses": {
            status: _json(_ref(ok), "success"),
            "400": _json(_ref("Error"), "bad input: nothing was written"),
            "401": _json(_ref("Error"), "missing or wrong bearer token"),
            "403": _json(_ref("Error"), "the server is read-only"),
            "404": _json(_ref("Error"), "unknown queue or job"),
            "413": _json(_ref("Error"), "request body over the size limit"),
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(_ref(body), body)}
    return op


_OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}
_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Queues": {"type": "object", "properties": {
        "queues": {"type": "array", "items": _ref("Queue")}, "read_only": {"type": "boolean"}}},
    "Queue": {**_OBJ, "description": "counts, paused, oldest pending job, counters, workers"},
    "Job": {**_OBJ, "description": "state, task, args, kwargs, attempts, errors, result"},
    "Submit": {"type": "object", "required": ["task"], "properties": {
        "task": {"type": "string"}, "args": {"type": "array"}, "kwargs": {"type": "object"},
        "delay": {"type": "number"}, "priority": {"type": "integer"}, "key": {"type": "string"},
        "retries": {"type": "integer"}, "timeout": {"type": "number"}}},
    "Submitted": {"type": "object", "properties": {
        "id": {"type": "string"}, "created": {"type": "boolean"}, "queue": {"type": "string"},
        "task": {"type": "string"}}},
    "Dispatch": {"type": "object", "required": ["num_messages"], "properties": {
        "num_messages": {"type": "integer", "minimum": 1, "maximum": 10000},
        "delay": {"type": "number", "minimum": 0, "maximum": 10,
                  "description": "seconds between submits; (num_messages - 1) * delay <= 60"},
        "work_ms": {"type": "number"}, "fail_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "queue": {"type": "string"}}},
    "Dispatched": {"type": "object", "properties": {
        "ids": {"type": "array", "items": {"type": "string"}}, "queue": {"type": "string"},
        "task": {"type": "string"}}},
    "Cancelled": {"type": "object", "properties": {
        "id": {"type": "string"}, "cancelled": {"type": "boolean"}}},
    "DeadLetters": {**_OBJ, "description": "matching count and the dead letters listed"},
    "Selection": {"type": "object", "description": "one of ids, task, error or all", "properties": {
        "ids": {"type": "array", "items": {"type": "string"}}, "task": {"type": "string"},
        "error": {"type": "string"}, "all": {"type": "boolean"}}},
    "Counts": {**_OBJ, "description": "selected, and retried or purged"},
    "Paused": {"type": "object", "properties": {
        "queue": {"type": "string"}, "paused": {"type": "boolean"}}},
}  # fmt: skip


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint."""
    q = ("queue",)
    return {
        "openapi": "3.1.0",
        "info": {"title": "aioqueue", "version": "1"},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/queues": {"get": _op("every queue served", "Queues")},
            "/api/queues/{queue}": {"get": _op("one queue", "Queue", params=q)},
            "/api/queues/{queue}/jobs": {
                "post": _op(
                    "submit a job by task name", "Submitted", body="Submit", params=q, status="201"
                ),  # fmt: skip
            },
            "/api/queues/{queue}/dead": {
                "get": _op(
                    "dead letters", "DeadLetters", params=q, query=("task", "error", "limit")
                ),  # fmt: skip
            },
            "/api/queues/{queue}/dead/retry": {
                "post": _op("requeue dead letters", "Counts", body="Selection", params=q),
            },
            "/api/queues/{queue}/dead/purge": {
                "post": _op("delete dead letters", "Counts", body="Selection", params=q),
            },
            "/api/queues/{queue}/pause": {"post": _op("pause the queue", "Paused", params=q)},
            "/api/queues/{queue}/resume": {"post": _op("resume the queue", "Paused", params=q)},
            "/api/jobs/{id}": {
                "get": _op("one job in full", "Job", params=("id",), query=("queue",)),
                "delete": _op(
                    "cancel a job that has not started",
                    "Cancelled",
                    params=("id",),
                    query=("queue",),
                ),  # fmt: skip
            },
            "/dispatch": {
                "post": _op(
                    "submit demo jobs at a pace", "Dispatched", body="Dispatch", status="202"
                ),  # fmt: skip
            },
            "/health/live": {
                "get": {
                    "summary": "the server answers (no token needed)",
                    "responses": {"200": _json(_OBJ, "live")},
                }
            },
            "/health/ready": {
                "get": {
                    "summary": "Redis answers a PING within 2 s (no token needed)",
                    "responses": {
                        "200": _json(_OBJ, "ready"),
                        "503": _json(_ref("Error"), "Redis does not answer"),
                    },
                }
            },
        },
    }
