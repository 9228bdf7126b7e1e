"""The event type handed to destinations."""

from __future__ import annotations

import dataclasses
import types
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["Event", "Payload"]

Payload = Any

_EMPTY: Mapping[str, str] = types.MappingProxyType({})


class Event(tuple[str, Any]):
    """One event as a destination receives it.

    It *is* fastapi-events' ``(event_name, payload)`` tuple — it unpacks, indexes, compares
    and JSON-encodes like one — and carries the delivery details as attributes::

        event_name, payload = event
        event.id, event.key, event.attempt

    Attributes:
        name: The event name given to ``dispatch()``.
        payload: The payload, as decoded from its stored JSON.
        id: The event's id; the same across retries and destinations, for de-duplication.
        key: The ordering key, if one was given.
        headers: String headers given to ``dispatch()``.
        created_at: When ``dispatch()`` was called (UTC).
        attempt: 1 on the first delivery to this destination, 2 on the first retry, ...
        destination: The name of the destination receiving this delivery.
        trace_context: The W3C trace context of the dispatching code, if any.
    """

    id: uuid.UUID
    key: str | None
    headers: Mapping[str, str]
    created_at: datetime | None
    attempt: int
    destination: str
    trace_context: Mapping[str, str]

    def __new__(
        cls,
        name: str,
        payload: Payload,
        id: uuid.UUID,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        created_at: datetime | None = None,
        attempt: int = 1,
        destination: str = "",
        trace_context: Mapping[str, str] | None = None,
    ) -> Event:
        self = super().__new__(cls, (name, payload))
        self.__dict__.update(
            id=id,
            key=key,
            headers=headers if headers is not None else _EMPTY,
            created_at=created_at,
            attempt=attempt,
            destination=destination,
            trace_context=trace_context if trace_context is not None else _EMPTY,
        )
        return self

    @property
    def name(self) -> str:
        return str(self[0])

    @property
    def payload(self) -> Payload:
        return self[1]

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(
            f"cannot assign to field {name!r}: events are immutable"
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Event):  # two deliveries: the same event only if the ids match
            return tuple.__eq__(self, other) and self.id == other.id
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]  # payloads are mutable

    def __repr__(self) -> str:
        return (
            f"Event(name={self.name!r}, payload={self.payload!r}, id={self.id!r}, "
            f"key={self.key!r}, attempt={self.attempt})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.name, self.payload, dict(self.__dict__)))


def _rebuild(name: str, payload: Payload, details: dict[str, Any]) -> Event:
    return Event(name, payload, **details)
