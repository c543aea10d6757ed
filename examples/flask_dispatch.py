"""A Flask app that dispatches demo jobs through ``queue.sync`` and reports on each job.

From the repository root, with ``AIOQUEUE_REDIS_URL`` set for both (``pip install flask``)::

    aioqueue-worker examples.demo_tasks:queue --processes 4
    flask --app examples.flask_dispatch run --port 5000
    curl -X POST localhost:5000/dispatch -H 'Content-Type: application/json' \\
        -d '{"num_messages": 10, "delay": 0.1, "work_ms": 50, "fail_rate": 0.2}'
    curl localhost:5000/jobs/<id>
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, request

from aioqueue import AioqueueError, ArgumentError, JobCancelled, JobFailed, RedisUnavailable
from examples.demo_tasks import burn, queue

MAX_MESSAGES = 10_000
MAX_DELAY = 10.0  # seconds between two submits

app = Flask(__name__)

Reply = tuple[dict[str, Any], int]


class BadRequest(Exception):
    """Raised when the dispatch request's JSON is not what ``/dispatch`` takes."""


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low} to {high}, got {value!r}")
    return float(value)


@app.post("/dispatch")
def dispatch() -> Reply:
    """Submit ``num_messages`` burn jobs, ``delay`` seconds apart; reply with their ids.

    JSON body: ``num_messages`` (1..10000), ``delay`` (seconds, default 0), and optionally the
    jobs' ``work_ms`` (default 10) and ``fail_rate`` (0..1, default 0).
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object, e.g. {"num_messages": 10, "delay": 0.1}')
    count = body.get("num_messages")
    if type(count) is not int or not 1 <= count <= MAX_MESSAGES:
        raise BadRequest(f"num_messages must be an int from 1 to {MAX_MESSAGES}, got {count!r}")
    delay = _number(body, "delay", 0.0, 0.0, MAX_DELAY)
    work_ms = _number(body, "work_ms", 10.0, 0.0, 60_000.0)
    fail_rate = _number(body, "fail_rate", 0.0, 0.0, 1.0)
    ids = []
    for i in range(count):
        if i and delay:
            time.sleep(delay)  # the pace asked for: one job every `delay` seconds
        ids.append(queue.sync.submit(burn, work_ms, fail_rate).id)
    return {"ids": ids}, 202


@app.get("/jobs/<job_id>")
def job_status(job_id: str) -> Reply:
    """The job's status, with its result once complete, or its error once it failed (``dead``
    when its retries were spent) or was cancelled."""
    job = queue.sync.job(job_id)
    status = job.status()
    reply: dict[str, Any] = {"id": job_id, "status": status}
    if status in ("complete", "failed", "dead", "cancelled"):
        try:
            reply["result"] = job.result(timeout=5.0)
        except (JobFailed, JobCancelled) as exc:
            reply["error"] = str(exc)
    return reply, 404 if status == "unknown" else 200


@app.errorhandler(BadRequest)
@app.errorhandler(ArgumentError)
def bad_request(exc: Exception) -> Reply:
    return {"error": str(exc)}, 400


@app.errorhandler(AioqueueError)
def queue_error(exc: AioqueueError) -> Reply:
    return {"error": str(exc)}, 503 if isinstance(exc, RedisUnavailable) else 500
