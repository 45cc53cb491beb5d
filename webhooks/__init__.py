"""Signed, retried webhook delivery for message events.

Producers publish with ``tasks.deliver_webhook.delay(event)``; this package
holds the domain code that the task calls.
"""

from webhooks.conversations import Conversation, ConversationConfig, ConversationStore
from webhooks.errors import (
    DeliveryError,
    ErrorKind,
    InvalidConfiguration,
    InvalidEvent,
    PermanentDeliveryError,
    PolicyRefusal,
    RetryableDeliveryError,
    WebhookError,
)
from webhooks.events import MessageEvent, parse_event
from webhooks.signing import SignatureMismatch, generate_secret, verify

__all__ = [
    "Conversation",
    "ConversationConfig",
    "ConversationStore",
    "DeliveryError",
    "ErrorKind",
    "InvalidConfiguration",
    "InvalidEvent",
    "MessageEvent",
    "PermanentDeliveryError",
    "PolicyRefusal",
    "RetryableDeliveryError",
    "SignatureMismatch",
    "WebhookError",
    "generate_secret",
    "parse_event",
    "verify",
]
