"""Request bodies read as JSON objects, and their fields checked, each failure a clear 400."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .context import HttpError

__all__ = ("json_object", "number", "only", "optional_str")


async def json_object(request: Request, example: str) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``).

    :raises HttpError: 400 when it is not JSON or not an object; 413 when over the cap (from
        the size limit on the way in).
    """
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"request body is not JSON ({exc}); expected e.g. {example}") from None
    if not isinstance(body, dict):
        raise HttpError(400, f"expected a JSON object, e.g. {example}, got {type(body).__name__}")
    return body


def only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """:raises HttpError: 400 naming the fields not in ``allowed``."""
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise HttpError(
            400, f"unexpected field(s) {', '.join(extra)}; allowed: {', '.join(allowed)}"
        )


def number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    """A number field within ``[low, high]``.

    :raises HttpError: 400 naming the field and the range.
    """
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise HttpError(400, f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def optional_str(body: dict[str, Any], name: str) -> str | None:
    """A string field, or None when absent or null.

    :raises HttpError: 400 when it is something else or empty.
    """
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise HttpError(400, f"{name} must be a non-empty string, got {value!r}")
    return value
