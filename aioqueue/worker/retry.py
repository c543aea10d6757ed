"""The retry policy: after a failed attempt, when to try again, or that the retries are spent."""

from __future__ import annotations

__all__ = ("retry_delay",)


def retry_delay(
    attempts: int,
    retries: int,
    *,
    backoff: float,
    backoff_max: float,
    jitter: float,
    immediate: bool = False,
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when none is left (dead-letter).

    Exponential backoff: ``backoff * 2 ** (attempts - 1)``, capped at ``backoff_max``, then scaled
    into its upper half by ``jitter`` (0 to 1) so that jobs that failed together spread out.

    :param attempts: attempts started so far, the failed one included (1 after the first).
    :param retries: attempts allowed after the first.
    :param jitter: a random number in [0, 1).
    :param immediate: retry without waiting (a lost worker: the job did nothing wrong).
    """
    if attempts > retries:
        return None
    if immediate:
        return 0.0
    delay = min(backoff * 2.0 ** (attempts - 1), backoff_max)
    return delay * (0.5 + jitter / 2)
