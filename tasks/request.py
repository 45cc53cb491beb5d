"""The delivery task's request: what Celery would otherwise acknowledge and forget.

A request lives in the worker's main process, beside kombu's connection,
and decides whether a finished task's message is acknowledged. Celery
acknowledges two kinds of unfinished delivery: one its hard time limit
killed, and one it cancelled on a broker connection loss under the gevent
pool. Both must come back instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celery.worker import state as worker_state
from celery.worker.request import Request, task_ready

if TYPE_CHECKING:
    from tasks.delivery import DeliveryTask

__all__ = ["DeliveryRequest"]

log = logging.getLogger(__name__)


class DeliveryRequest(Request):  # type: ignore[misc]
    """A hard time limit retries or dead-letters the delivery before the ack.

    Celery's own handler acknowledges a task killed by the hard limit
    without calling ``on_failure``: the event would end neither delivered
    nor dead-lettered. The sender's deadline keeps attempts far below the
    limit, so this is the safety net for what it cannot cut (a resolver
    that hangs, a starved process). Runs in the worker's main process.
    """

    task: DeliveryTask

    def acknowledge(self) -> None:
        """Never acknowledge a delivery Celery cancelled on a broker connection loss.

        On a connection loss Celery cancels every running late-ack task. The
        gevent pool ends a cancelled task with ``GreenletExit`` and reports it
        as a *success*, so Celery acknowledges it. redis-py retries that ack
        until Redis is back, and the message leaves kombu's ``unacked`` hash
        before the reclaim (``tasks/reclaim.py``) can hand it out again: the
        event would be neither delivered nor dead-lettered. Left
        unacknowledged, it is redelivered with the rest of what the lost
        connection held. The prefork pool reports a cancelled task as
        ``Terminated`` and never gets here.
        """
        if self._already_cancelled:
            log.warning(
                "delivery %s was cancelled by a broker connection loss; "
                "left unacknowledged to be delivered again",
                self.id,
            )
            return
        super().acknowledge()

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft or worker_state.should_terminate:
            super().on_timeout(soft, timeout)
            return
        try:
            self.task.after_hard_limit(self, timeout)
        except Exception:
            # Neither a retry nor a dead letter could be stored: hand the
            # message back to the broker rather than acknowledge it.
            log.exception("delivery %s passed the hard time limit; requeueing it", self.id)
            task_ready(self)
            self.reject(requeue=True)
            return
        super().on_timeout(soft, timeout)
