"""Event names: what dispatch() and register() accept, and the string that is stored."""

from __future__ import annotations

import enum
from typing import Any, TypeAlias

from outbox_events.exceptions import EventNameError

EventName: TypeAlias = str | enum.Enum  # an Enum member's str value (or name) is stored
MAX_NAME_LENGTH = 255  # characters; the width of the table's name column


def event_name_str(name: Any) -> str:
    """The stored form of an event name: the str itself, or an Enum member's value when that is
    a str (else its name), so that a member and its value are the same event.

    Raises:
        EventNameError: the name is not a str or Enum member, is empty or blank, is longer than
            ``MAX_NAME_LENGTH``, or holds text no database stores (NUL, lone surrogates).
    """
    if isinstance(name, enum.Enum):
        name = name.value if isinstance(name.value, str) else name.name
    elif not isinstance(name, str):
        raise EventNameError(
            f"event name must be a str or an Enum member, got {type(name).__name__}: {name!r}"
        )
    if not name.strip():
        raise EventNameError(f"event name must not be empty or blank, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise EventNameError(
            f"event name {name[:40]!r}... is {len(name)} characters long; at most "
            f"{MAX_NAME_LENGTH} are allowed"
        )
    problem = text_problem(name)
    if problem:
        raise EventNameError(f"event name {name!r} {problem}")
    return str(name)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored in a text column as it is, or None if it can."""
    if "\x00" in text:
        return "contains a NUL character, which PostgreSQL does not store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (it holds a lone surrogate)"
    return None
