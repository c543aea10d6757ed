"""OpenTelemetry: the producer's span context travels in the job; the worker makes one run span
per attempt, linked to it; without OpenTelemetry nothing of it is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind

from aioqueue import Queue, wire
from tests import tasks, tracing_tasks
from tests._async import eventually
from tests.conftest import ROOT, WorkerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.extras]


def _producer() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider of the test's own (the global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _traceparent(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _stored(r: redis.Redis, queue: Queue, job_id: str) -> tuple[bytes, wire.Envelope]:
    data = r.hget(queue.keys.jobs, job_id)
    assert isinstance(data, bytes)
    return data, wire.decode_envelope(data)


def test_old_envelopes_decode_and_untraced_jobs_cost_no_bytes() -> None:
    """An envelope written before the trace field existed still decodes (trace None); one
    without a trace encodes to the same bytes as before; one with a trace round-trips."""

    class OldEnvelope(msgspec.Struct, kw_only=True, omit_defaults=True):
        v: int
        id: str
        task: str
        submitted: float = 0.0

    old = wire.encode(OldEnvelope(v=wire.WIRE_VERSION, id="j1", task="t", submitted=1.5))
    env = wire.decode_envelope(old)
    assert env.trace is None and env.id == "j1"
    assert wire.encode(env) == old
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    traced = msgspec.structs.replace(env, trace=carrier)
    assert wire.decode_envelope(wire.encode(traced)).trace == carrier


async def test_submit_carries_the_current_span_context(
    queue: Queue, sync_redis: redis.Redis
) -> None:
    """Jobs submitted under a span carry its W3C trace context (each job of a bulk submit too);
    jobs submitted with no span current carry nothing."""
    provider, exporter = _producer()
    with provider.get_tracer("test").start_as_current_span("submit") as span:
        job = await queue.submit(tasks.add, 1, 2)
        bulk = await queue.submit_many(tasks.add, [(i, i) for i in range(3)])
    for j in [job, *bulk]:
        _, env = _stored(sync_redis, queue, j.id)
        assert env.trace is not None and env.trace["traceparent"] == _traceparent(span)
    [finished] = exporter.get_finished_spans()
    assert (
        finished.context is not None and finished.context.span_id == span.get_span_context().span_id
    )
    plain = await queue.submit(tasks.add, 1, 2)
    data, env = _stored(sync_redis, queue, plain.id)
    assert env.trace is None and b"trace" not in data


class _TracingWorker(WorkerProcess):
    """A worker serving tests/tracing_tasks.py's queue."""

    def start(self) -> _TracingWorker:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self._logfile = open(self.log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aioqueue", "tests.tracing_tasks:queue", "--redis-url",
             self.redis_url, "--log-level", "info", *self.args],
            cwd=ROOT, env=env, stdout=self._logfile, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    async def _registered(self, r: redis.asyncio.Redis) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or await r.zcard(tracing_tasks.queue.keys.workers) > 0


def _ids(ctx: dict[str, str]) -> tuple[str, str]:
    return ctx["trace_id"], ctx["span_id"]


async def test_worker_run_spans_link_to_the_submit(redis_url: str, tmp_path: Path) -> None:
    """Each attempt gets its own CONSUMER span, a root linked to the submit's span, with the
    queue, job id and attempt; a failed attempt has ERROR status and the error."""
    spans_file = tmp_path / "spans.jsonl"
    worker = _TracingWorker(
        redis_url,
        tmp_path / "worker.log",
        processes=1,
        env={"AIOQUEUE_TEST_SPANS": str(spans_file)},
    )
    tracing_tasks.queue.redis_url = redis_url
    provider, _ = _producer()
    try:
        await worker.start().ready()
        async with tracing_tasks.queue as q:
            with provider.get_tracer("test").start_as_current_span("submit") as submit:
                ok = await q.submit(tracing_tasks.add, 1, 2)
                retried = await q.submit(tracing_tasks.fail_once, str(tmp_path / "marker"))
            assert await ok.result(timeout=10) == 3
            assert await retried.result(timeout=10) == "ok"

        def spans() -> list[dict[str, Any]]:
            if not spans_file.exists():
                return []
            return [json.loads(line) for line in spans_file.read_text().splitlines()]

        await eventually(lambda: len(spans()) >= 3, 10, "three run spans")
    finally:
        worker.stop()
    ctx = submit.get_span_context()
    linked_to = (f"0x{ctx.trace_id:032x}", f"0x{ctx.span_id:016x}")
    by_job: dict[str, list[dict[str, Any]]] = {}
    for s in spans():
        assert s["kind"] == str(SpanKind.CONSUMER) and s["parent_id"] is None
        assert [_ids(link["context"]) for link in s["links"]] == [linked_to]
        assert _ids(s["context"])[0] != linked_to[0]  # a trace of its own
        attrs = s["attributes"]
        assert attrs["messaging.system"] == "aioqueue"
        assert attrs["messaging.destination.name"] == "tracing"
        by_job.setdefault(attrs["messaging.message.id"], []).append(s)
    [run] = by_job[ok.id]
    assert run["name"] == "aioqueue run tests.tracing_tasks.add"
    assert run["attributes"]["aioqueue.attempt"] == 1 and run["status"]["status_code"] == "UNSET"
    first, second = sorted(by_job[retried.id], key=lambda s: s["attributes"]["aioqueue.attempt"])
    assert [first["attributes"]["aioqueue.attempt"], second["attributes"]["aioqueue.attempt"]] == [
        1,
        2,
    ]
    assert first["status"] == {
        "status_code": "ERROR",
        "description": "ValueError: first attempt fails",
    }
    assert first["attributes"]["error.type"] == "ValueError"
    [event] = first["events"]
    assert event["name"] == "exception"
    assert "first attempt fails" in event["attributes"]["exception.stacktrace"]
    assert second["status"]["status_code"] == "UNSET"
    assert second["attributes"]["aioqueue.outcome"] == "ok"
    assert _ids(first["context"])[0] != _ids(second["context"])[0]


BLOCKER = """
import sys

class _NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoOpenTelemetry())
"""

SCRIPT = """
import asyncio, json, sys

from aioqueue import tracing
from aioqueue.worker import Worker, WorkerSettings
from tests.tracing_tasks import add, otel_modules, queue

async def main():
    queue.redis_url = sys.argv[1]
    async with queue:
        jobs = [await queue.submit(add, 2, 3), await queue.submit(otel_modules)]
        settings = WorkerSettings(processes=1, burst=True, handle_signals=False)
        await Worker(queue, "tests.tracing_tasks:queue", settings).run()
        results = [await job.result(timeout=10) for job in jobs]
    here = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print(json.dumps({"results": results, "here": here, "api": tracing._api is not None}))

asyncio.run(main())
"""


def test_without_opentelemetry_nothing_of_it_is_imported(redis_url: str, tmp_path: Path) -> None:
    """With opentelemetry not importable, a producer and a worker (supervisor and child) run
    jobs as usual and no opentelemetry module is ever loaded."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    env.pop("AIOQUEUE_TEST_SPANS", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), redis_url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out == {"results": [5, []], "here": [], "api": False}
