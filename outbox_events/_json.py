"""JSON encoding of payloads and headers, done once, at the call site."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from typing import Any

import pydantic_core
from pydantic import BaseModel

from outbox_events.exceptions import PayloadSerializationError

# How deep _find_bad_path looks for the offending value; deeper payloads are reported without
# a path rather than overflowing the stack a second time.
_MAX_PATH_DEPTH = 200


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    # Anything else pydantic knows how to put in JSON (timedelta, URLs, paths, ...), the same
    # way it does in model_dump(mode="json").
    try:
        return pydantic_core.to_jsonable_python(value)
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError):
        raise TypeError(f"{type(value).__name__} is not JSON serialisable") from None


_encoder = json.JSONEncoder(
    default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
)


def encode(value: Any, *, event_name: str, what: str = "payload") -> str:
    """Serialise ``value`` to compact JSON, naming the offending field when it cannot be.

    Args:
        value: The data to serialise.
        event_name: The event it belongs to, for the error message.
        what: What ``value`` is ("payload", "headers"), for the error message.

    Raises:
        PayloadSerializationError: ``value`` is not JSON-compatible, holds NaN or infinity,
            refers to itself, or holds text that is not valid Unicode (lone surrogates).
    """
    try:
        text = _encoder.encode(value)
        text.encode("utf-8")  # lone surrogates pass json but no database takes them
    except (TypeError, ValueError, RecursionError) as exc:
        path = _find_bad_path(value, what, set())
        where = f" at {path}" if path else ""
        raise PayloadSerializationError(
            f"{what} of event {event_name!r} cannot be serialised to JSON{where}: {exc}"
        ) from exc
    return text


def _find_bad_path(value: Any, path: str, parents: set[int], depth: int = 0) -> str | None:
    """The path of the first value the encoder rejects, e.g. ``payload['items'][2]``."""
    if depth > _MAX_PATH_DEPTH:
        return None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in parents:
            return f"{path} (a reference to itself)"
        parents = parents | {id(value)}
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"{path} (key {key!r})"
            if not _key_ok(key):
                return f"{path} (key {key!r})"
            found = _find_bad_path(item, f"{path}[{key!r}]", parents, depth + 1)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_bad_path(item, f"{path}[{index}]", parents, depth + 1)
            if found:
                return found
        return None
    try:
        _encoder.encode(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return path
    return None


def _key_ok(key: str | float | bool | None) -> bool:
    if isinstance(key, float):
        return math.isfinite(key)
    if isinstance(key, str):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def decode(text: str | None) -> Any:
    """Parse stored JSON."""
    return None if text is None else json.loads(text)
