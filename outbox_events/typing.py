"""The event type handed to destinations."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

__all__ = ["Event", "Payload"]

Payload = Any


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event as a destination receives it.

    It unpacks like fastapi-events' ``(event_name, payload)`` tuple::

        event_name, payload = event

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

    name: str
    payload: Payload
    id: uuid.UUID
    key: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    created_at: datetime | None = None
    attempt: int = 1
    destination: str = ""
    trace_context: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        yield self.name
        yield self.payload

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        return (self.name, self.payload)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):  # fastapi-events' events were (name, payload) tuples
            return (self.name, self.payload) == other
        if isinstance(other, Event):
            return all(
                getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # payloads are mutable
