"""webhooks.progress: one type for a delivery's progress, one spelling of the task's kwargs."""

from __future__ import annotations

import inspect
from dataclasses import replace

from tasks.delivery import deliver_webhook
from webhooks.progress import Delivery

EVENT = {"conversation_id": "c", "data": {"id": "m"}}


def test_task_kwargs_are_the_tasks_own_parameters() -> None:
    # Given a delivery with progress
    delivery = Delivery(EVENT, "msg_1", "https://x.example/h", 3, 1, 2.5, 1234)

    # Then its kwargs bind to deliver_webhook's signature, and retries is left
    # to Celery's own option
    kwargs = delivery.task_kwargs()
    inspect.signature(deliver_webhook.run).bind(**kwargs)
    assert kwargs == {
        "event": EVENT,
        "webhook_id": "msg_1",
        "callback_url": "https://x.example/h",
        "attempt": 3,
        "waited_s": 2.5,
        "place_ms": 1234,
        "sequence": None,
    }
    assert kwargs["event"] is EVENT  # handed on, not copied


def test_from_task_reads_back_what_task_kwargs_wrote() -> None:
    delivery = Delivery(EVENT, "msg_1", None, attempt=4, retries=2, waited_s=1.0, place_ms=7)
    assert Delivery.from_task(delivery.task_kwargs(), retries=2, task_id="other") == delivery


def test_a_producers_kwargs_start_at_the_first_attempt() -> None:
    # Given the kwargs delay() publishes (no progress) and a task id
    delivery = Delivery.from_task({"event": EVENT, "webhook_id": None}, retries=0, task_id="t1")

    # Then the delivery is named by the task id and starts at attempt 1
    assert delivery == Delivery(EVENT, "t1")


def test_without_an_attempt_number_it_is_retries_plus_one() -> None:
    assert Delivery.from_task({"event": EVENT}, retries=2, task_id="t1").attempt == 3


def test_a_new_step_is_a_replace_that_keeps_everything_else() -> None:
    delivery = Delivery(EVENT, "msg_1", None, attempt=1, retries=1, waited_s=0.0, place_ms=9)
    later = replace(delivery, attempt=2, waited_s=5.0)
    assert (later.webhook_id, later.retries, later.place_ms) == ("msg_1", 1, 9)
