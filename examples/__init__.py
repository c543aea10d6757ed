"""Example apps built on aioqueue; run them from the repository root (see each module)."""
