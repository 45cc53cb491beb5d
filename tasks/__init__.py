"""Celery tasks. Producers use ``from tasks import deliver_webhook``."""

from tasks.delivery import deliver_webhook

__all__ = ["deliver_webhook"]
