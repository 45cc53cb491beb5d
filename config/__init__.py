"""Settings and the Celery app: the edge where configuration is read."""
