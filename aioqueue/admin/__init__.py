"""The ``aioqueue`` command: inspect queues, jobs and dead letters, retry them, check Redis."""
