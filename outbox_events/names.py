"""Event names: what dispatch() and register() accept, and the string that is stored."""

from __future__ import annotations

import enum
from typing import Any, Union

from outbox_events.exceptions import EventNameError

EventName = Union[str, enum.Enum]
MAX_NAME_LENGTH = 255  # characters; the width of the table's name column


def event_name_str(name: Any) -> str:
    """The stored form of an event name: the str itself, or an Enum member's value when that is
    a str (else its name), so that a member and its value are the same event."""
    if isinstance(name, enum.Enum):
        name = name.value if isinstance(name.value, str) else name.name
    elif not isinstance(name, str):
        raise EventNameError(
            f"event name must be a str or an Enum member, got {type(name).__name__}: {name!r}"
        )
    if not name.strip():
        raise EventNameError("event name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise EventNameError(
            f"event name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    return name
