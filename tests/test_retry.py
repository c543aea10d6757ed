"""The retry policy, as a pure function."""

from __future__ import annotations

import pytest

from aioqueue.worker.retry import retry_delay


def delay(attempts: int, retries: int = 5, jitter: float = 1.0, **kw: object) -> float | None:
    return retry_delay(attempts, retries, backoff=1.0, backoff_max=10.0, jitter=jitter, **kw)  # type: ignore[arg-type]


def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    """Without jitter the delay doubles from the base per attempt and stops at the cap."""
    assert [delay(a, retries=9, jitter=1.0) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_jitter_keeps_the_delay_in_its_upper_half() -> None:
    """Jitter spreads a delay between half of it and all of it."""
    assert delay(3, jitter=0.0) == 2.0
    assert delay(3, jitter=0.5) == 3.0
    low, high = delay(3, jitter=0.0), delay(3, jitter=0.999)
    assert low is not None and high is not None and 2.0 <= low < high < 4.0


@pytest.mark.parametrize(("attempts", "retries"), [(1, 0), (3, 2), (4, 2)])
def test_spent_retries_mean_dead_letter(attempts: int, retries: int) -> None:
    """Once the attempts started pass the retries allowed, there is no next attempt."""
    assert delay(attempts, retries) is None


def test_the_last_allowed_retry_is_granted() -> None:
    """With retries=2 the third attempt (after two failures) is still allowed."""
    assert delay(2, retries=2) is not None


def test_immediate_retry_waits_nothing_but_respects_the_budget() -> None:
    """A lost worker's job goes straight back, but only while retries are left."""
    assert delay(1, retries=1, immediate=True) == 0.0
    assert delay(2, retries=1, immediate=True) is None
