"""Small helpers for messages people read."""

from __future__ import annotations

__all__ = ("count",)


def count(n: int, noun: str) -> str:
    """``n`` and the noun, singular or plural: "1 attempt", "3 attempts"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
