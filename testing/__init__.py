"""Real local parts for tests and the demo: Redis, HTTPS receivers, workers.

Nothing here is a fake: a real ``redis-server`` process, a real TLS server
with a throwaway CA, and real ``celery worker`` processes.

A development tool beside the package, not part of the wheel (it needs the
``[demo]`` extra); import it with the checkout on the path (its root as the
working directory, as ``pytest``, ``python -m bench...`` and ``python -m demo``
run).
"""
