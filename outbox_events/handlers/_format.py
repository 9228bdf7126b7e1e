"""How events look on a broker: message bodies and attributes shared by SQS and Pub/Sub."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from outbox_events.exceptions import ConfigurationError
from outbox_events.typing import Event

BodyFormat = Literal["fastapi-events", "envelope"]
Serializer = Callable[[Event], str]

EVENT_ID_ATTRIBUTE = "event_id"
EVENT_NAME_ATTRIBUTE = "event_name"
EVENT_KEY_ATTRIBUTE = "event_key"
TRACE_ATTRIBUTES = ("traceparent", "tracestate")


def fastapi_events_body(event: Event) -> str:
    """``["name", payload]``: what fastapi-events' handlers sent."""
    return json.dumps([event.name, event.payload], default=str)


def envelope_body(event: Event) -> str:
    """An object with the event's id, name, payload, key, headers and creation time."""
    return json.dumps(
        {
            "id": str(event.id),
            "name": event.name,
            "payload": event.payload,
            "key": event.key,
            "headers": dict(event.headers),
            "created_at": event.created_at.isoformat() if event.created_at else None,
        },
        default=str,
    )


BODY_FORMATS: dict[str, Serializer] = {
    "fastapi-events": fastapi_events_body,
    "envelope": envelope_body,
}


def serializer_for(serializer: Serializer | None, body_format: str) -> Serializer:
    """The serializer given, or the one of ``body_format``."""
    if serializer is not None:
        if not callable(serializer):
            raise ConfigurationError(f"serializer must be callable, got {serializer!r}")
        return serializer
    try:
        return BODY_FORMATS[body_format]
    except KeyError:
        raise ConfigurationError(
            f"body_format must be one of {sorted(BODY_FORMATS)}, got {body_format!r}"
        ) from None


def event_attributes(event: Event) -> dict[str, str]:
    """Attributes every broker message carries: the event id and name, its ordering key (if
    any), and the W3C trace context of the code that dispatched it."""
    attributes = {EVENT_ID_ATTRIBUTE: str(event.id), EVENT_NAME_ATTRIBUTE: event.name}
    if event.key is not None:
        attributes[EVENT_KEY_ATTRIBUTE] = event.key
    for name in TRACE_ATTRIBUTES:
        value = event.trace_context.get(name)
        if value:
            attributes[name] = value
    return attributes
