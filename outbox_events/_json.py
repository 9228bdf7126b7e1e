"""JSON encoding of payloads and headers, done once, at the call site."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

from pydantic import BaseModel

from outbox_events.exceptions import PayloadSerializationError


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
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_encoder = json.JSONEncoder(default=_default, ensure_ascii=False, separators=(",", ":"),
                            allow_nan=False)


def encode(value: Any, *, event_name: str) -> str:
    """Serialise ``value`` to compact JSON, naming the offending field when it cannot be."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        path = _find_bad_path(value)
        where = f" at {path}" if path else ""
        raise PayloadSerializationError(
            f"payload of event {event_name!r} cannot be serialised to JSON{where}: {exc}"
        ) from exc


def _find_bad_path(value: Any, path: str = "payload") -> str | None:
    """The path of the first value the encoder rejects, e.g. ``payload['items'][2]``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"{path} (key {key!r})"
            found = _find_bad_path(item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_bad_path(item, f"{path}[{index}]")
            if found:
                return found
        return None
    try:
        _encoder.encode(value)
    except (TypeError, ValueError):
        return path
    return None


def decode(text: str | None) -> Any:
    """Parse stored JSON."""
    return None if text is None else json.loads(text)
