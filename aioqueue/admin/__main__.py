"""``python -m aioqueue.admin``: the same as the ``aioqueue`` command."""

from .cli import main

main()
