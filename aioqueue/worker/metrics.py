"""A worker's Prometheus metrics: job counters and timings per task, state read at scrape time.

Job events cost one increment of a plain number each (the series of a task are made once, on
its first job; histograms find their bucket by bisection) and never a Redis call: the worker's
loop is the only writer, and a scrape, served on that loop too, turns them into metric families.
prometheus_client's own Counter and Histogram take a lock and check their labels on every
event: eight calls a job that stood out in profiles of the worker. What the worker knows (lease
losses, fenced outcomes, child restarts, its processes) is read from its state when scraped;
the queue's depth and the age of its oldest pending job are read from Redis then too, in one
script call.

Every metric carries a ``queue`` label; job metrics carry ``task`` too, which is the task's
name, or ``unknown`` for a job whose task the queue does not register (so that junk names can't
grow the series without bound).
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import anyio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .supervisor import Worker

__all__ = ("Metrics", "QueueSnapshot")

log = logging.getLogger("aioqueue.worker")

UNKNOWN_TASK = "unknown"
#: Seconds, for run times of CPU-bound jobs and waits in a queue: 5 ms to 30 minutes.
BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, float("inf"),
)  # fmt: skip
_LE = tuple("+Inf" if b == float("inf") else repr(b) for b in BUCKETS)  # the buckets' labels
PRIORITY_LEVELS = 32  # the most priority levels the oldest-pending read looks at
READ_TIMEOUT = 2.0  # seconds a scrape waits for Redis before it leaves the queue's gauges out


def _version() -> str:
    try:
        return version("aioqueue")
    except PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
        return "unknown"


def created_at(job_id: str) -> float | None:
    """The wall-clock time (producer's clock, seconds) embedded in a job id, if it has one."""
    try:
        return int(job_id[:16], 16) / 1e9
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The queue as one script read it: counts by state, and the oldest pending job's age
    (seconds, by Redis's clock against the id's creation time; 0 when nothing is pending)."""

    pending: int
    scheduled: int
    running: int
    dead: int
    oldest_pending_age: float
    paused: bool = False


class _Count:
    """A counter of job events."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> None:
        self.n += 1


class _Hist:
    """A histogram of seconds over :data:`BUCKETS` (counts per bucket, not cumulative)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as the exposition has them."""
        total, out = 0, list[tuple[str, float]]()
        for le, n in zip(_LE, self.counts, strict=True):
            total += n
            out.append((le, total))
        return out


class _TaskSeries:
    """The series of one task."""

    __slots__ = ("started", "succeeded", "failed", "retried", "dead", "run", "wait")

    def __init__(self) -> None:
        self.started, self.succeeded, self.failed = _Count(), _Count(), _Count()
        self.retried, self.dead = _Count(), _Count()
        self.run, self.wait = _Hist(), _Hist()


#: (attribute of a task's series, metric name, help) for each job counter, then histogram
_COUNTERS = (
    ("started", "aioqueue_jobs_started", "Attempts given to a child process"),
    ("succeeded", "aioqueue_jobs_succeeded", "Jobs completed, as recorded in Redis"),
    ("failed", "aioqueue_jobs_failed",
     "Attempts that failed (retried or dead-lettered), as recorded in Redis"),
    ("retried", "aioqueue_jobs_retried", "Failed attempts scheduled to run again"),
    ("dead", "aioqueue_jobs_dead", "Jobs dead-lettered (no retries left, or unrunnable)"),
)  # fmt: skip
_HISTOGRAMS = (
    ("run", "aioqueue_job_run_seconds", "Seconds a child ran an attempt"),
    ("wait", "aioqueue_job_wait_seconds",
     "Seconds from a job's submission (the producer's wall clock) to its first claim"),
)  # fmt: skip


class Metrics:
    """The metrics of one worker, in a registry of its own (never the global one)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.queue = worker.queue.name
        self.registry = r = CollectorRegistry()
        self._series: dict[str, _TaskSeries] = {}
        self._unknown: _TaskSeries | None = None
        self.snapshot: QueueSnapshot | None = None
        r.register(_JobCollector(self))
        r.register(_StateCollector(self))

    def add_process_metrics(self) -> None:
        """Also export the supervisor process's CPU, memory and file descriptors (process_*)."""
        ProcessCollector(registry=self.registry)

    def task(self, name: str) -> _TaskSeries:
        """The series of task ``name`` (``unknown`` when the queue has no such task)."""
        series = self._series.get(name)
        if series is not None:
            return series
        if name not in self.w.queue.tasks:
            if self._unknown is None:
                self._unknown = _TaskSeries()
            return self._unknown
        series = self._series[name] = _TaskSeries()
        return series

    def series(self) -> list[tuple[str, _TaskSeries]]:
        """Each task's series by its label, ``unknown`` last."""
        out = list(self._series.items())
        if self._unknown is not None:
            out.append((UNKNOWN_TASK, self._unknown))
        return out

    async def read_queue(self) -> QueueSnapshot | None:
        """The queue's counts and oldest pending age in one script call, or None when Redis
        does not answer within :data:`READ_TIMEOUT`."""
        try:
            with anyio.fail_after(READ_TIMEOUT):
                o = await self.w.scripts.overview(PRIORITY_LEVELS)
        except Exception as exc:
            log.debug("metrics: the queue could not be read: %s", exc)
            return None
        born = [t for t in (created_at(i) for i in o.level_heads) if t is not None]
        age = max(0.0, o.now_ms / 1000 - min(born)) if born else 0.0
        pending, scheduled, running, dead = o.pending, o.scheduled, o.running, o.dead
        return QueueSnapshot(pending, scheduled, running, dead, age, o.paused)

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics if ``accept`` asks for it) and its
        content type, after reading the queue."""
        self.snapshot = await self.read_queue()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _JobCollector(Collector):
    """The job counters and timings, per task."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterable[Metric]:
        q, series = self.m.queue, self.m.series()
        for attr, name, doc in _COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["queue", "task"])
            for task, s in series:
                counter.add_metric([q, task], getattr(s, attr).n)
            yield counter
        for attr, name, doc in _HISTOGRAMS:
            hist = HistogramMetricFamily(name, doc, labels=["queue", "task"])
            for task, s in series:
                h: _Hist = getattr(s, attr)
                hist.add_metric([q, task], h.buckets(), h.sum)
            yield hist


class _StateCollector(Collector):
    """What the worker and the queue say at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m
        self.info = {
            "worker": m.w.id,
            "version": _version(),
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
        }

    def collect(self) -> Iterable[Metric]:
        m, w, q = self.m, self.m.w, self.m.queue
        pool = w.pool

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["queue"])
            family.add_metric([q], value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["queue"])
            family.add_metric([q], value)
            return family

        info = InfoMetricFamily("aioqueue_worker", "This worker", labels=["queue"])
        info.add_metric([q], self.info)
        yield info
        yield gauge("aioqueue_worker_processes", "Child processes configured", w.settings.processes)
        yield gauge(
            "aioqueue_worker_live_processes", "Child processes taking jobs now",
            pool.capacity if pool is not None else 0,
        )  # fmt: skip
        yield gauge("aioqueue_worker_running_jobs", "Jobs this worker holds now", w.running)
        yield counter(
            "aioqueue_lease_losses",
            "Leases this worker lost (a heartbeat found another holder, or none)",
            w.counters["lease_lost"],
        )
        yield counter(
            "aioqueue_fenced",
            "Outcomes Redis rejected because this worker no longer held the job",
            w.counters["fenced"],
        )
        yield counter(
            "aioqueue_child_restarts",
            "Child processes started to replace one that exited, was killed or retired",
            pool.restarts if pool is not None else 0,
        )
        snap = m.snapshot
        yield gauge(
            "aioqueue_redis_up", "1 if the queue's counts were read from Redis for this scrape",
            0 if snap is None else 1,
        )  # fmt: skip
        if snap is None:
            return
        depth = GaugeMetricFamily(
            "aioqueue_queue_depth",
            "Jobs in the queue by state (running: leased to a worker)",
            labels=["queue", "state"],
        )
        for state, n in (
            ("pending", snap.pending), ("scheduled", snap.scheduled),
            ("running", snap.running), ("dead", snap.dead),
        ):  # fmt: skip
            depth.add_metric([q, state], n)
        yield depth
        yield gauge(
            "aioqueue_oldest_pending_age_seconds",
            "Age of the oldest pending job, from its submission (the producer's wall clock) to "
            "Redis's clock now; 0 when none is pending",
            snap.oldest_pending_age,
        )
        yield gauge(
            "aioqueue_queue_paused", "1 while the queue is paused (workers claim nothing), else 0",
            1 if snap.paused else 0,
        )  # fmt: skip
