"""The public API: what webhooks.__all__ promises exists, and the producer import."""

from __future__ import annotations

import importlib

import pytest

import webhooks

MODULES_WITH_ALL = [
    "webhooks",
    "webhooks.backoff",
    "webhooks.conversations",
    "webhooks.errors",
    "webhooks.events",
    "webhooks.keys",
    "webhooks.sender",
    "webhooks.signing",
    "webhooks.transport",
    "webhooks.urlpolicy",
    "config.settings",
    "tasks",
]


@pytest.mark.parametrize("name", webhooks.__all__)
def test_every_exported_name_exists(name: str) -> None:
    assert getattr(webhooks, name, None) is not None


def test_all_has_no_duplicates() -> None:
    assert len(set(webhooks.__all__)) == len(webhooks.__all__)


def test_core_names_are_public() -> None:
    # Given what the README's producer snippet and receivers rely on
    expected = {"parse_event", "InvalidEvent", "PolicyRefusal", "verify", "generate_secret"}

    # Then all of it is exported
    assert expected <= set(webhooks.__all__)


@pytest.mark.parametrize("module_name", MODULES_WITH_ALL)
def test_every_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_producer_import_works() -> None:
    # Given the producer's documented import
    from tasks import deliver_webhook

    # Then it is a Celery task with .delay
    assert callable(deliver_webhook.delay)
    assert deliver_webhook.name
