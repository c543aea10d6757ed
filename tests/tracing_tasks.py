"""Tasks for the tracing tests; with AIOQUEUE_TEST_SPANS set, importing this module (as a worker
does) installs an OpenTelemetry SDK tracer provider that appends each finished span to that file
as one line of JSON."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aioqueue import Queue

queue = Queue("tracing")

_SPANS = os.environ.get("AIOQUEUE_TEST_SPANS")
if _SPANS:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class _JsonLines(SpanExporter):
        def __init__(self, path: str) -> None:
            self.path = path

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(self.path, "a") as f:
                f.writelines(s.to_json(indent=None) + "\n" for s in spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_JsonLines(_SPANS)))
    trace.set_tracer_provider(provider)


@queue.task
def add(a: int, b: int) -> int:
    return a + b


@queue.task(retries=1)
def fail_once(marker: str) -> str:
    """Raises on the first attempt (creating ``marker``), succeeds on the next."""
    path = Path(marker)
    if not path.exists():
        path.touch()
        raise ValueError("first attempt fails")
    return "ok"


@queue.task
def otel_modules() -> list[str]:
    """The OpenTelemetry modules loaded in the child that runs this."""
    return sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
