"""``python -m aioqueue MODULE:ATTR``: the same as ``aioqueue-worker``."""

from .cli import main

main()
