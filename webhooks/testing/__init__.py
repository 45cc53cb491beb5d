"""Real local parts for tests and the demo: Redis, HTTPS receivers, workers.

Nothing here is a fake: a real ``redis-server`` process, a real TLS server
with a throwaway CA, and real ``celery worker`` processes.
"""
