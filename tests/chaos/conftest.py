"""Fixtures of the chaos suite: private Redis servers, worker subprocesses, the ledger, the report.

Each scenario gets its own ``redis-server`` (never the shared one on 6379), its own ledger
directory and its own workers (see :mod:`.harness`).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aioqueue.testing import RedisServer

from . import harness
from .harness import REPO, Scenario, Workers
from .history import Report

DEFAULT_SEED = 20241124


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of every random choice in the chaos suite (default {DEFAULT_SEED})",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Measure the machine's speed once (when anything of this directory runs), and stretch each
    chaos scenario's pytest timeout by it (a hang still fails, a slow machine does not)."""
    here = Path(__file__).parent
    if not any(here in Path(str(item.path)).parents for item in items):
        return
    harness.set_slowdown(harness.measure_slowdown())
    chaos = [item for item in items if item.get_closest_marker("chaos") is not None]
    try:
        base = float(config.getini("timeout") or 0)
    except (ValueError, TypeError):  # pytest-timeout not installed
        base = 0.0
    for item in chaos:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker is not None and marker.args else base
        if seconds > 0:
            item.add_marker(pytest.mark.timeout(seconds * harness.SLOWDOWN), append=False)


@pytest.fixture(autouse=True)
def _machine_speed(request: pytest.FixtureRequest) -> None:
    """Measure the machine's speed again before each chaos scenario: other work on the machine
    comes and goes, and every wait and timing margin of the scenario is scaled by it."""
    if request.node.get_closest_marker("chaos") is not None:
        harness.set_slowdown(harness.measure_slowdown())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.failed and "chaos_seed" in getattr(item, "fixturenames", ()):
        seed = item.config.getoption("--chaos-seed")
        rep.sections.append(("chaos seed", f"seed {seed}: replay with --chaos-seed {seed}"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def chaos_seed(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--chaos-seed"))


@pytest.fixture
def rng(chaos_seed: int, request: pytest.FixtureRequest) -> random.Random:
    """A random source per test, derived from the chaos seed and the test's id."""
    return random.Random(chaos_seed ^ zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def chaos_report(chaos_seed: int) -> Iterator[Report]:
    path = Path(os.environ.get("AIOQUEUE_CHAOS_REPORT") or REPO / "chaos-report.json")
    report = Report(path, chaos_seed)
    yield report
    report.write()


@pytest.fixture
def ledger_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ledger"
    d.mkdir()
    return d


@pytest.fixture
def workers(tmp_path: Path, ledger_dir: Path) -> Iterator[Workers]:
    w = Workers(tmp_path, ledger_dir)
    yield w
    strays = w.cleanup()
    assert not strays, f"worker children left behind: {strays}"


@pytest.fixture
def scenario(
    workers: Workers,
    ledger_dir: Path,
    chaos_report: Report,
    chaos_seed: int,
    rng: random.Random,
) -> Scenario:
    """Everything a scenario works with, in one object (see :class:`.harness.Scenario`)."""
    return Scenario(workers, ledger_dir, chaos_report, chaos_seed, rng)


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """``make(appendonly=..., appendfsync=..., maxmemory=...)``: a started private server."""
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()
