"""The HTTP API and dashboard, ``aioqueue-web``: needs ``pip install 'aioqueue[web]'``."""
