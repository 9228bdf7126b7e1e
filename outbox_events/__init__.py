"""outbox_events: durable, transactional event dispatch for Starlette and FastAPI.

``dispatch()`` events while serving a request; they are stored in an outbox table in the same
transaction as the request's own writes and delivered afterwards, at least once, by a relay.
"""

from outbox_events.dispatcher import dispatch
from outbox_events.exceptions import (
    ConfigurationError,
    DeliveryError,
    DispatchError,
    EventNameError,
    MissingContextError,
    NoDeliveryError,
    OutboxError,
    PartialDeliveryError,
    PayloadSerializationError,
    PayloadTooLargeError,
    PayloadValidationError,
    PermanentDeliveryError,
    StoreError,
)
from outbox_events.outbox import Outbox
from outbox_events.relay.transaction import delivery_session
from outbox_events.relay.worker import DrainResult
from outbox_events.retry import RetryPolicy
from outbox_events.typing import Event

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "DispatchError",
    "DrainResult",
    "Event",
    "EventNameError",
    "MissingContextError",
    "NoDeliveryError",
    "Outbox",
    "OutboxError",
    "PartialDeliveryError",
    "PayloadSerializationError",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PermanentDeliveryError",
    "RetryPolicy",
    "StoreError",
    "delivery_session",
    "dispatch",
]
