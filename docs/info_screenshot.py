"""Render ``aioqueue info --watch`` as it looks on a terminal to ``docs/info-watch.png``.

Starts a private Redis and a worker serving ``examples/demo_tasks.py`` with 2 processes, feeds
it demo jobs (10 ms of CPU, 5% failing) until 20 s into the second whole minute by the clock, so
that the last minute's counts are whole, then draws one refresh of the command's screen with
rich and photographs it in headless Chromium (``pip install -e '.[web,dev]'``; Chromium from
``$CHROMIUM`` or ``/usr/bin/chromium``)::

    python docs/info_screenshot.py [--seconds S] [--out docs/info-watch.png]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from playwright.async_api import async_playwright
from rich.console import Console

from aioqueue import Queue
from aioqueue.admin.info import _blocks, queue_info
from aioqueue.admin.render import Fields, renderable
from aioqueue.admin.session import Session
from aioqueue.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent


async def feed(url: str, seconds: float) -> None:
    """Submit demo jobs at about 120 a second, some failing, for ``seconds``."""
    async with Queue("demo", url) as q:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.gather(
                *(q.submit("demo.burn", work_ms=10.0, fail_rate=0.05) for _ in range(12))
            )
            await asyncio.sleep(0.1)  # the pace of a steady producer, not a wait for state


async def shoot(url: str, out: Path) -> None:
    session = Session(url)
    started = time.monotonic()
    data = [await queue_info(session, "demo")]
    took = f"{(time.monotonic() - started) * 1000:.1f} ms"
    console = Console(record=True, width=118, file=io.StringIO())
    console.print("$ aioqueue info demo --watch", style="bold")
    console.print(renderable([*_blocks(data), Fields("", [("read in", took)])]))
    svg = console.export_svg(title="aioqueue info --watch")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        page = await browser.new_page(viewport={"width": 1000, "height": 200})
        await page.set_content(f"<body style='margin:0;background:#fff'>{svg}</body>")
        await page.locator("svg").screenshot(path=str(out))
        await browser.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, help="how long to feed jobs first")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "info-watch.png")
    a = ap.parse_args()
    with RedisServer() as server:
        env = {**os.environ, "AIOQUEUE_REDIS_URL": server.url}
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop's work
            [sys.executable, "-m", "aioqueue", "examples.demo_tasks:queue", "--processes", "2"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,  # a line per job
        )
        try:
            now = time.time()
            await feed(server.url, a.seconds or 60 - now % 60 + 80)
            await shoot(server.url, a.out)
        finally:
            worker.terminate()
            worker.wait(30)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    asyncio.run(main())
