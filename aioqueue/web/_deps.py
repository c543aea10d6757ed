"""Fail at import, with the install command, when Starlette or uvicorn is missing."""

from __future__ import annotations

from importlib.util import find_spec

_missing = [name for name in ("starlette", "uvicorn") if find_spec(name) is None]
if _missing:
    raise ImportError(
        f"aioqueue.web needs {' and '.join(_missing)}: install aioqueue[web] "
        f"(pip install 'aioqueue[web]')"
    )
