"""``python -m aioqueue.web``: the same as ``aioqueue-web``."""

from .cli import main

main()
