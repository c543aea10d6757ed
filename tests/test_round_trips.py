"""What the read calls cost: each is one command, counted at the client of a real Redis."""

from __future__ import annotations

from typing import Any

import pytest

from aioqueue import Queue, wire
from aioqueue.scripts import FinishItem, Receipt, Scripts
from tests import tasks

pytestmark = pytest.mark.anyio

DEAD = (60_000, 1000)


async def test_dead_letters_and_info_send_one_command_each(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted at the client: dead_letters() and info() each send one command (a script)."""
    scripts = Scripts(queue.redis, queue.keys, queue.redis_url)
    job = await queue.submit(tasks.noop)
    _, claim = await scripts.claim(1, 10_000, "w", Receipt(queue.keys.receipt("c"), "1", 60_000))
    out = wire.encode(wire.Outcome(v=1, task="tests.tasks.noop", ok=False))
    item = FinishItem(job.id, claim.jobs[0].token, "dead", result=out, error=b"e", ttl_ms=60_000)
    await scripts.finish([item], Receipt(queue.keys.receipt("f"), "1", 60_000), DEAD)
    await queue.dead_letters()  # connections opened and scripts loaded before counting
    await queue.info()

    sent: list[str] = []
    real = queue.redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return await real(*args, **options)

    monkeypatch.setattr(queue.redis, "execute_command", counting)
    for call in (queue.dead_letters, queue.info):
        sent.clear()
        await call()
        assert sent == ["EVALSHA"], (call.__name__, sent)
