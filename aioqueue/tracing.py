"""OpenTelemetry tracing, used only where the process has loaded OpenTelemetry itself.

A producer puts the span context current at submit into the job (W3C trace context, through the
global propagator); the worker's supervisor makes one ``aioqueue run <task>`` span per attempt,
from the moment a child starts it until the child replies, *linked* to that context (a link, not
a parent: each attempt is a trace of its own, and retries don't nest).

Nothing here imports ``opentelemetry`` unless ``opentelemetry.trace`` is in ``sys.modules``
already: a process whose code never loaded OpenTelemetry can have no current span to propagate
and no tracer provider to send spans to, so it pays a dictionary lookup per job and no import,
whether or not the package is installed.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span  # type: ignore[import-not-found,unused-ignore]

    from .wire import ChildReply
    from .worker._state import Held

__all__ = ("RunSpans", "inject", "run_spans")

_LOADED = "opentelemetry.trace"  # imported by anything that can make or hold a span
TRACER = "aioqueue"


class _Api:
    """The parts of OpenTelemetry's API used here, imported once, on first need."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace  # type: ignore[import-not-found,unused-ignore]

        self.get_current = context.get_current
        self.no_parent = context.Context()
        self.current_span = trace.get_current_span
        self.inject = propagate.inject
        self.extract = propagate.extract
        self.tracer = trace.get_tracer(TRACER)  # a proxy until the application sets a provider
        self.provider = trace.get_tracer_provider
        self.no_op = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)  # no provider set
        self.link = trace.Link
        self.consumer = trace.SpanKind.CONSUMER
        self.error = trace.StatusCode.ERROR
        # the context and carrier of the last inject: a bulk submit injects once, not per job
        self.last: tuple[object, dict[str, str] | None] = (None, None)


_api: _Api | None = None


def _load() -> _Api:
    global _api
    if _api is None:
        _api = _Api()
    return _api


def inject() -> dict[str, str] | None:
    """The span context current at submit, as the global propagator writes it (W3C
    ``traceparent`` and ``tracestate`` by default), for the job's envelope; None when no valid
    span is current, and always when this process has not loaded OpenTelemetry."""
    if _LOADED not in sys.modules:
        return None
    api = _api or _load()
    ctx = api.get_current()
    last_ctx, carrier = api.last
    if ctx is last_ctx:  # contexts are immutable: the same one gives the same headers
        return carrier
    carrier = None
    if api.current_span(ctx).get_span_context().is_valid:
        carrier = {}
        api.inject(carrier, context=ctx)
        carrier = carrier or None
    api.last = (ctx, carrier)
    return carrier


def run_spans(queue: str) -> RunSpans | None:
    """The worker's span maker, or None when this process has not loaded OpenTelemetry (the
    tasks module, or ``opentelemetry-instrument``, sets up the tracer provider before the
    worker starts)."""
    if _LOADED not in sys.modules:
        return None
    return RunSpans(queue, _load())


class RunSpans:
    """One CONSUMER span per attempt, kept from the child's start to its reply."""

    def __init__(self, queue: str, api: _Api) -> None:
        self.queue = queue
        self._api = api
        self._open: dict[Held, Span] = {}
        self._live = False  # a tracer provider is set (for good: it can be set only once)
        self._check_at = 0.0  # until then, take it that none is (asking costs a microsecond)

    def start(self, held: Held) -> None:
        """A child started the job: open its span, linked to the producer's span context."""
        api, env = self._api, held.env
        if not self._live and not self._provider_set():  # spans would be thrown away
            return
        links = None
        if env is not None and env.trace:
            linked = api.current_span(api.extract(env.trace)).get_span_context()
            if linked.is_valid:
                links = [api.link(linked)]
        self._open[held] = api.tracer.start_span(
            f"aioqueue run {held.task}",
            context=api.no_parent,
            kind=api.consumer,
            links=links,
            attributes={
                "messaging.system": "aioqueue",
                "messaging.operation.type": "process",
                "messaging.destination.name": self.queue,
                "messaging.message.id": held.id,
                "aioqueue.attempt": held.attempts,
            },
        )

    def _provider_set(self) -> bool:
        now = time.monotonic()
        if now < self._check_at:
            return False
        self._live = not isinstance(self._api.provider(), self._api.no_op)
        self._check_at = now + 1.0
        return self._live

    def end(self, held: Held, reply: ChildReply | None) -> None:
        """The child replied (``reply``), or the job was taken back (None): close its span."""
        span = self._open.pop(held, None)
        if span is None:  # never started
            return
        if span.is_recording():
            if reply is None:
                span.set_attribute("aioqueue.outcome", "lost" if held.lost else "released")
            elif reply.ok:
                span.set_attribute("aioqueue.outcome", "ok")
            else:
                err = reply.error
                kind, type_, message, tb = (
                    (err.kind, err.type, err.message, err.traceback)
                    if err is not None
                    else ("raised", "Error", "unknown failure", "")
                )
                span.set_attributes({"aioqueue.outcome": kind, "error.type": type_})
                span.add_event(
                    "exception",
                    {
                        "exception.type": type_,
                        "exception.message": message,
                        "exception.stacktrace": tb,
                    },
                )
                span.set_status(self._api.error, f"{type_}: {message}")
        span.end()
