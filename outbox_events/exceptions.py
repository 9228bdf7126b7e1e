"""The library's exceptions: one tree rooted at :class:`OutboxError`.

Each class's docstring is its default message and says how to fix the problem.
"""

from __future__ import annotations


class OutboxError(Exception):
    """An error raised by outbox_events."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())


class ConfigurationError(OutboxError, ValueError):
    """The Outbox is configured wrongly; check the arguments given to Outbox()."""


class DispatchError(OutboxError, ValueError):
    """The event could not be dispatched; fix the event name or payload at the call site."""


class EventNameError(DispatchError, TypeError):
    """The event name must be a non-empty str, an Enum member, or a pydantic model with
    __event_name__."""


class PayloadValidationError(DispatchError):
    """The payload does not match the schema registered for this event name."""


class PayloadSerializationError(DispatchError, TypeError):
    """The payload cannot be serialised to JSON; pass JSON-compatible data (dict, list, str,
    int, float, bool, None, or pydantic models)."""


class PayloadTooLargeError(DispatchError):
    """The serialised payload is larger than the Outbox's max_payload_size; send a reference
    (an id or a URL) instead of the data, or raise max_payload_size."""


class MissingContextError(OutboxError, LookupError):
    """dispatch() was called outside a request handled by EventHandlerASGIMiddleware and outside
    `async with outbox.unit_of_work():`; add the middleware to the app, or wrap background code
    and scripts in `async with outbox.unit_of_work():`."""


class NoDeliveryError(OutboxError, LookupError):
    """delivery_session() was called outside a delivery; it gives the session of the event a
    handler is handling, to handlers that take one event at a time (local handler functions,
    BaseEventHandler.handle), not to handle_many."""


class StoreError(OutboxError):
    """The outbox table could not be read or written; check the database is up and migrated
    (`outbox-relay migrate`)."""


class DeliveryError(OutboxError):
    """A destination failed to take an event; it will be retried."""


class PermanentDeliveryError(DeliveryError):
    """A destination rejected an event for good; it is dead-lettered without further retries."""


class PartialDeliveryError(DeliveryError):
    """Some events of a batch failed; `failures` maps each failed event id to its error.

    Raise this from ``BaseEventHandler.handle_many`` to report per-event results: events not
    named in ``failures`` count as delivered.
    """

    def __init__(self, failures: dict[object, BaseException], message: str | None = None) -> None:
        super().__init__(message or f"{len(failures)} event(s) of the batch failed")
        self.failures = failures
