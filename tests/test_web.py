"""``aioqueue-web``: the JSON API over real HTTP against the private Redis and real workers, and
the dashboard in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import aioqueue
from aioqueue import Queue
from aioqueue.testing import RedisServer
from aioqueue.web.cli import main as web_main
from tests import tasks
from tests._async import eventually
from tests.conftest import FAST, ROOT, StartWorker

uvicorn = pytest.importorskip("uvicorn", reason="the web extra isn't installed: aioqueue[web]")
from aioqueue.web.app import create_app  # noqa: E402 - needs starlette, checked just above
from aioqueue.web.context import Settings  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.extras]

CHROMIUM = "/usr/bin/chromium"
Serve = Callable[..., str]


@pytest.fixture
def serve(redis_url: str) -> Iterator[Serve]:
    """Start the app with uvicorn on a free loopback port, in a thread; ``serve(**settings)``
    gives its base URL. By default it serves the tests' queue, checking its tasks."""
    servers: list[tuple[Any, threading.Thread]] = []

    def start(**kw: Any) -> str:
        kw.setdefault("queues", (tasks.queue.name,))
        kw.setdefault("tasks", dict(tasks.queue.tasks))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app = create_app(Settings(redis_url=redis_url, **kw))
        config = uvicorn.Config(app, log_level="warning", ws="none", http="h11", lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:  # a condition polled, with a deadline
            assert thread.is_alive() and time.monotonic() < deadline, "web server didn't start"
            time.sleep(0.005)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


def snapshot(r: redis.Redis) -> dict[Any, Any]:
    """Every key and its serialized value: equal snapshots mean nothing was written."""
    return {k: r.dump(k) for k in sorted(r.keys())}


async def finished(c: httpx.AsyncClient, url: str, job_id: str, state: str = "complete") -> Any:
    """Wait until the API shows the job in ``state``; its data."""

    async def check() -> Any:
        d = (await c.get(f"{url}/api/jobs/{job_id}")).json()
        return d if d.get("state") == state else None

    return await eventually(check, 20, f"job {job_id} {state}")


async def test_submit_by_name_runs_and_shows_the_job(
    serve: Serve, client: httpx.AsyncClient, queue: Queue, start_worker: StartWorker
) -> None:
    """A job submitted by task name over HTTP is completed by a worker; its page has the
    result; pause holds new jobs back and resume lets them run."""
    url = serve()
    await start_worker()
    add = {"task": "tests.tasks.add", "args": [2], "kwargs": {"b": 3}}
    r = await client.post(f"{url}/api/queues/tests/jobs", json=add)
    assert r.status_code == 201, r.text
    assert r.json()["created"] is True
    d = await finished(client, url, r.json()["id"])
    assert d["task"] == "tests.tasks.add" and d["result"] == 5 and d["attempts"] == 1

    keyed = {"task": "tests.tasks.noop", "key": "k1", "delay": 0}
    again = await client.post(f"{url}/api/queues/tests/jobs", json=keyed)
    same = await client.post(f"{url}/api/queues/tests/jobs", json=keyed)
    assert (again.status_code, same.status_code) == (201, 200)
    assert same.json() == {**again.json(), "created": False}

    r = await client.post(f"{url}/api/queues/tests/pause")
    assert r.status_code == 200 and r.json() == {"queue": "tests", "paused": True}
    held = (await client.post(f"{url}/api/queues/tests/jobs",
                              json={"task": "tests.tasks.add", "args": [1, 1]})).json()  # fmt: skip
    info = (await client.get(f"{url}/api/queues/tests")).json()
    assert info["paused"] is True and info["pending"] == 1
    assert [len(w["jobs"]) for w in info["workers"]] == [0]
    assert (await client.post(f"{url}/api/queues/tests/resume")).json()["paused"] is False
    await finished(client, url, held["id"])
    listed = (await client.get(f"{url}/api/queues")).json()
    assert [q["queue"] for q in listed["queues"]] == ["tests"]
    assert listed["queues"][0]["counters"]["completed"] == 3 and listed["read_only"] is False


async def test_cancel_a_waiting_job(serve: Serve, client: httpx.AsyncClient, queue: Queue) -> None:
    """DELETE withdraws a job that has not started; once cancelled it says so, and an unknown
    id is a 404."""
    url = serve()
    r = await client.post(f"{url}/api/queues/tests/jobs",
                          json={"task": "tests.tasks.noop", "delay": 60})  # fmt: skip
    job_id = r.json()["id"]
    r = await client.delete(f"{url}/api/jobs/{job_id}?queue=tests")
    assert r.status_code == 200 and r.json()["cancelled"] is True
    assert (await client.get(f"{url}/api/jobs/{job_id}")).json()["state"] == "cancelled"
    r = await client.delete(f"{url}/api/jobs/nope")
    assert r.status_code == 404 and "not found" in r.json()["error"]


@pytest.fixture
def demo_worker(redis_url: str, tmp_path: Path) -> Iterator[None]:
    """A real worker serving examples/demo_tasks.py's queue (the dispatcher's burn task)."""
    log = open(tmp_path / "demo-worker.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aioqueue", "examples.demo_tasks:queue", "--redis-url", redis_url,
         "--processes", "1", *FAST],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    log.close()


async def test_dispatch_submits_demo_jobs_that_complete(
    serve: Serve, client: httpx.AsyncClient, demo_worker: None
) -> None:
    """``POST /dispatch`` submits N burn jobs at the pace asked and returns their ids; the
    demo worker completes every one."""
    url = serve(queues=("demo",), tasks=None)
    started = time.monotonic()
    ask = {"num_messages": 5, "delay": 0.05, "work_ms": 1, "fail_rate": 0}
    r = await client.post(f"{url}/dispatch", json=ask)
    assert r.status_code == 202, r.text
    assert time.monotonic() - started >= 4 * 0.05
    body = r.json()
    assert len(set(body["ids"])) == 5 and body["queue"] == "demo" and body["task"] == "demo.burn"
    for job_id in body["ids"]:
        d = await finished(client, url, job_id)
        assert d["result"]["spins"] >= 0
    r = await client.post(f"{url}/dispatch", json={"num_messages": 3})  # no delay: one trip
    assert r.status_code == 202 and len(r.json()["ids"]) == 3


async def test_dead_letters_listed_retried_and_purged_by_filter(
    serve: Serve, client: httpx.AsyncClient, queue: Queue, start_worker: StartWorker,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Dead letters list by task and error type; retry and purge take ids, a task, an error
    type or all, and answer counts."""
    url = serve()
    await start_worker()
    jobs = "/api/queues/tests/jobs"
    flaky_args = [str(tmp_path / "l"), 9]
    for body in ({"task": "tests.tasks.fail", "args": ["a"]},
                 {"task": "tests.tasks.fail", "args": ["b"]},
                 {"task": "tests.tasks.flaky", "args": flaky_args, "retries": 0}):  # fmt: skip
        assert (await client.post(url + jobs, json=body)).status_code == 201

    async def dead(query: str = "") -> Any:
        return (await client.get(f"{url}/api/queues/tests/dead{query}")).json()

    await eventually(lambda: _count(dead(), 3), 20, "three dead letters")
    by_task = await dead("?task=tests.tasks.fail")
    assert by_task["matching"] == 2 and {
        d["last_error"]["type"] for d in by_task["dead_letters"]
    } == {"ValueError"}
    assert (await dead("?error=RuntimeError&limit=5"))["dead_letters"][0][
        "task"
    ] == "tests.tasks.flaky"
    assert len((await dead("?limit=1"))["dead_letters"]) == 1

    [flaky] = (await dead("?error=RuntimeError"))["dead_letters"]
    r = await client.post(f"{url}/api/queues/tests/dead/retry", json={"error": "RuntimeError"})
    assert r.json() == {"queue": "tests", "selected": 1, "retried": 1}
    await eventually(lambda: _count(dead(), 3), 20, "the retried job dead again")
    r = await client.post(f"{url}/api/queues/tests/dead/purge", json={"task": "tests.tasks.fail"})
    assert r.json() == {"queue": "tests", "selected": 2, "purged": 2}
    [left] = (await dead())["dead_letters"]
    assert left["id"] == flaky["id"] and left["attempts"] == 2  # its history kept
    r = await client.post(f"{url}/api/queues/tests/dead/purge", json={"ids": [left["id"], "x"]})
    assert r.json() == {"queue": "tests", "selected": 1, "purged": 1, "not_found": ["x"]}
    r = await client.post(f"{url}/api/queues/tests/dead/retry", json={"all": True})
    assert r.json()["selected"] == 0


async def _count(dead: Any, n: int) -> bool:
    return bool((await dead)["matching"] == n)


BAD: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/api/queues/tests/jobs", {"task": "tests.tasks.nope"}, 400, "unknown task"),
    ("POST", "/api/queues/tests/jobs", b"{not json", 400, "not JSON"),
    ("POST", "/api/queues/tests/jobs", [1], 400, "expected a JSON object"),
    ("POST", "/api/queues/tests/jobs", {"task": "tests.tasks.add", "args": ["x", 1]}, 400, "a"),
    ("POST", "/api/queues/tests/jobs", {"task": "tests.tasks.add", "args": [1, 2, 3]}, 400, "add"),
    ("POST", "/api/queues/tests/jobs", {"task": "tests.tasks.add", "argz": []}, 400, "argz"),
    ("POST", "/api/queues/tests/jobs", {"task": "tests.tasks.noop", "delay": -1}, 400, "delay"),
    ("POST", "/api/queues/tests/jobs", {"args": []}, 400, "task is required"),
    ("POST", "/api/queues/tests/jobs", b"[" + b"1," * (1 << 20) + b"1]", 413, "over the limit"),
    ("POST", "/api/queues/nope/jobs", {"task": "tests.tasks.noop"}, 404, "unknown queue 'nope'"),
    ("GET", "/api/queues/nope", None, 404, "unknown queue"),
    ("GET", "/api/jobs/0123", None, 404, "not found"),
    ("POST", "/dispatch", {"num_messages": 0}, 400, "num_messages must be an int"),
    ("POST", "/dispatch", {"num_messages": 2, "fail_rate": 2}, 400, "fail_rate must be"),
    ("POST", "/dispatch", {"num_messages": 100, "delay": 1}, 400, "hold the request open 99 s"),
    ("POST", "/api/queues/tests/dead/retry", {}, 400, "select the dead letters"),
    ("POST", "/api/queues/tests/dead/purge", {"ids": "x"}, 400, "ids must be"),
    ("GET", "/api/queues/tests/dead?limit=0", None, 400, "limit must be"),
    ("PUT", "/api/queues/tests/jobs", {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD,
                         ids=[f"{b[3]}-{b[4][:20]}" for b in BAD])  # fmt: skip
async def test_bad_input_is_refused_and_writes_nothing(
    serve: Serve, client: httpx.AsyncClient, queue: Queue, sync_redis: redis.Redis,
    method: str, path: str, body: Any, status: int, message: str,
) -> None:  # fmt: skip
    """Each bad request gets its 4xx with a JSON message saying what is wrong, and Redis is
    left exactly as it was."""
    url = serve()
    await queue.submit(tasks.noop)  # something there to be left alone
    before = snapshot(sync_redis)
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    r = await client.request(method, url + path, content=content)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert snapshot(sync_redis) == before


async def test_token_is_required_for_the_api_only(
    serve: Serve, client: httpx.AsyncClient, queue: Queue, sync_redis: redis.Redis
) -> None:
    """With a token set, API calls without it or with another get 401 and write nothing; the
    dashboard's files load without it."""
    url = serve(token="s3cret")
    before = snapshot(sync_redis)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = await client.post(f"{url}/api/queues/tests/jobs", headers=headers,
                              json={"task": "tests.tasks.noop"})  # fmt: skip
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
    assert (await client.get(f"{url}/api/queues")).status_code == 401
    assert snapshot(sync_redis) == before
    good = {"Authorization": "Bearer s3cret"}
    assert (await client.get(f"{url}/api/queues", headers=good)).status_code == 200
    r = await client.post(f"{url}/api/queues/tests/jobs", headers=good,
                          json={"task": "tests.tasks.noop"})  # fmt: skip
    assert r.status_code == 201
    assert (await client.get(f"{url}/")).status_code == 200
    assert (await client.get(f"{url}/static/dashboard.js")).status_code == 200


async def test_health_probes_need_no_token_and_follow_redis(
    serve: Serve, client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """/health/live and /health/ready answer a probe without the token; ready is 503 naming
    the cause while Redis is down, and 200 again once it is back."""
    url = serve(token="s3cret")
    assert (await client.get(f"{url}/health/live")).json() == {"live": True}
    assert (await client.get(f"{url}/health/ready")).json() == {"ready": True}
    redis_server.kill()
    try:
        r = await client.get(f"{url}/health/ready")
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        assert (await client.get(f"{url}/health/live")).status_code == 200
    finally:
        redis_server.start()
    r = await eventually(lambda: _ready(client, url), 10, "ready again")
    assert r == 200


async def _ready(client: httpx.AsyncClient, url: str) -> int | None:
    r = await client.get(f"{url}/health/ready")
    return r.status_code if r.status_code == 200 else None


async def test_read_only_refuses_every_write(
    serve: Serve, client: httpx.AsyncClient, queue: Queue, sync_redis: redis.Redis
) -> None:
    """Read-only mode answers reads and refuses every write with 403, writing nothing."""
    url = serve(read_only=True)
    job = await queue.submit(tasks.noop)
    before = snapshot(sync_redis)
    writes = [("POST", "/api/queues/tests/jobs", {"task": "tests.tasks.noop"}),
              ("POST", "/dispatch", {"num_messages": 1}), ("POST", "/api/queues/tests/pause", {}),
              ("POST", "/api/queues/tests/dead/purge", {"all": True}),
              ("DELETE", f"/api/jobs/{job.id}", None)]  # fmt: skip
    for method, path, body in writes:
        r = await client.request(method, url + path, json=body)
        assert r.status_code == 403 and "read-only" in r.json()["error"], (path, r.text)
    assert snapshot(sync_redis) == before
    r = await client.get(f"{url}/api/queues")
    assert r.status_code == 200 and r.json()["read_only"] is True
    assert (await client.get(f"{url}/api/jobs/{job.id}")).json()["state"] == "pending"


async def test_openapi_document_lists_every_path(serve: Serve, client: httpx.AsyncClient) -> None:
    """``/openapi.json`` is an OpenAPI 3 document naming every endpoint."""
    doc = (await client.get(serve() + "/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/queues", "/api/queues/{queue}", "/api/queues/{queue}/jobs",
        "/api/queues/{queue}/dead", "/api/queues/{queue}/dead/retry",
        "/api/queues/{queue}/dead/purge", "/api/queues/{queue}/pause",
        "/api/queues/{queue}/resume", "/api/jobs/{id}", "/dispatch", "/health/live",
        "/health/ready",
    }  # fmt: skip
    assert set(doc["paths"]["/api/jobs/{id}"]) == {"get", "delete"}


def test_cli_refuses_a_public_host_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``aioqueue-web --host 0.0.0.0`` without a token exits 2 saying how to fix it."""
    monkeypatch.delenv("AIOQUEUE_WEB_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exc:
        web_main(["--host", "0.0.0.0", "--queue", "q"])
    assert exc.value.code == 2
    assert "AIOQUEUE_WEB_TOKEN" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system's Chromium for Playwright, installed with apt-get when missing (as root);
    skips when Playwright isn't importable or Chromium can't be installed."""
    pytest.importorskip("playwright.async_api", reason="Playwright isn't installed")
    if not os.path.exists(CHROMIUM):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{CHROMIUM} is missing and can't be installed (apt-get as root)")
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            done = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
            if done.returncode != 0:
                pytest.skip(f"{CHROMIUM} could not be installed: {done.stderr[-300:]!r}")
    return CHROMIUM


async def test_dashboard_retries_a_dead_letter_until_complete(
    serve: Serve, client: httpx.AsyncClient, queue: Queue, start_worker: StartWorker,
    tmp_path: Path, chromium: str,
) -> None:  # fmt: skip
    """In the dashboard, "Retry" on a dead letter requeues it; the job page shows it complete
    with its result and the failed first attempt's traceback."""
    from playwright.async_api import async_playwright, expect

    url = serve()
    await start_worker()
    flaky = {"task": "tests.tasks.flaky", "args": [str(tmp_path / "ledger"), 1], "retries": 0}
    r = await client.post(f"{url}/api/queues/tests/jobs", json=flaky)
    job_id = r.json()["id"]
    await finished(client, url, job_id, "dead")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True,
                                          args=["--no-sandbox"])  # fmt: skip
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.goto(url + "/")
            await expect(page.get_by_role("link", name=job_id)).to_be_visible()
            timing = await page.evaluate(PAGE_COST)
            await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
            await page.get_by_role("link", name=job_id).click()  # its job page
            await expect(page.locator("#job-state")).to_have_text("dead")
            await expect(page.locator("#job-errors")).to_contain_text("attempt 1 fails")
            await expect(page.locator("#job-errors pre")).to_contain_text("Traceback")
            await page.get_by_role("button", name=f"Retry {job_id}").click()
            await expect(page.locator("#job-state")).to_have_text("complete", timeout=15_000)
            await expect(page.locator("#job-result")).to_have_text("2")
            await expect(page.get_by_role("link", name=job_id)).to_have_count(0)
        finally:
            await browser.close()
    (tmp_path / "page-cost.json").write_text(json.dumps(timing))
    assert timing["bytes"] < 50_000 and timing["load_ms"] < 5_000, timing


# The page's weight (bytes of every response body) and load time, from Navigation Timing.
PAGE_COST = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const res = performance.getEntriesByType("resource").filter((r) => !r.name.includes("/api/"));
  return {bytes: [nav, ...res].reduce((n, e) => n + e.decodedBodySize, 0),
          load_ms: nav.loadEventEnd - nav.startTime, files: res.length + 1};
}"""


async def test_dashboard_shows_a_running_jobs_progress_and_cancels_it(
    serve: Serve, client: httpx.AsyncClient, queue: Queue, start_worker: StartWorker,
    tmp_path: Path, chromium: str,
) -> None:  # fmt: skip
    """A running job's page shows its last progress report; "Cancel" stops it (its child is
    killed by its worker) and the page then says cancelled."""
    from playwright.async_api import async_playwright, expect

    url = serve()
    await start_worker()
    job = await queue.submit(tasks.half_then_wait, str(tmp_path / "never"))
    await eventually(job.last_progress, 20, "the job's first report")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True,
                                          args=["--no-sandbox"])  # fmt: skip
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.goto(f"{url}/#job/{job.id}")
            await expect(page.locator("#job-state")).to_have_text("running")
            await expect(page.locator("#job-progress")).to_have_text("50% half (attempt 1)")
            await page.locator("#job-cancel").click()
            await expect(page.locator("#job-state")).to_have_text("cancelled", timeout=15_000)
        finally:
            await browser.close()
    with pytest.raises(aioqueue.JobCancelled):
        await job.result(timeout=10)
