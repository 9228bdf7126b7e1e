"""``dispatch()``: validate, serialise and queue an event in the current unit of work."""

from __future__ import annotations

import enum
import math
import os
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from outbox_events import _json, _tracing, unit_of_work
from outbox_events.exceptions import (
    ConfigurationError,
    DispatchError,
    EventNameError,
    MissingContextError,
    PayloadTooLargeError,
    PayloadValidationError,
)
from outbox_events.ids import uuid7
from outbox_events.names import MAX_NAME_LENGTH, EventName, event_name_str, text_problem
from outbox_events.registry.payload_schema import BaseEventPayloadSchemaRegistry
from outbox_events.registry.payload_schema import registry as default_registry

__all__ = ["DISABLE_DISPATCH_ENV_VARS", "dispatch"]

# Either variable, set to a truthy value, turns dispatch() into a no-op (after validation).
DISABLE_DISPATCH_ENV_VARS = ("OUTBOX_EVENTS_DISABLE_DISPATCH", "FASTAPI_EVENTS_DISABLE_DISPATCH")
_TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE = frozenset({"", "n", "no", "f", "false", "off", "0"})


def dispatch(
    event_name_or_model: EventName | BaseModel | None = None,
    payload: Any = None,
    event_name: EventName | None = None,
    validate_payload: bool = True,
    payload_schema_cls_dict_args: dict[str, Any] | None = None,
    payload_schema_registry: BaseEventPayloadSchemaRegistry | None = None,
    middleware_id: int | None = None,
    payload_schema_dump: bool = True,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    delay: timedelta | float | None = None,
) -> uuid.UUID:
    """Queue an event in the current request or unit of work; it is stored when that commits.

    Name resolution, payload validation and JSON serialisation happen here, so bad input raises
    at the call site and nothing half-valid reaches the outbox.

    Args:
        event_name_or_model: The event name (str or Enum member), or a pydantic model whose
            ``__event_name__`` names the event and whose fields are the payload.
        payload: The payload: JSON-compatible data or pydantic models.
        event_name: The event name; wins over one derived from a model.
        validate_payload: Validate a dict payload against the schema registered for the name.
        payload_schema_cls_dict_args: Keyword arguments for ``model_dump()`` (default:
            ``mode="json"`` only, so default values are kept; fastapi-events defaulted to
            ``exclude_unset=True``).
        payload_schema_registry: The schema registry to use (default: the global ``registry``).
        middleware_id: Outside a request, the id of the middleware whose outbox takes the event
            (fastapi-events compatibility); it is written in a transaction of its own.
        payload_schema_dump: Store the validated model's dump rather than the input dict.
        key: Ordering key: events with the same key reach each destination in dispatch order.
        headers: String headers that travel with the event.
        delay: Deliver no earlier than this long after dispatch (timedelta or seconds).

    Returns:
        The event's id: a time-ordered UUID that stays the same across retries.

    Raises:
        EventNameError: the name is missing, empty or not a str/Enum.
        DispatchError: a model and a payload were both given, or ``key``, ``headers`` or
            ``delay`` is invalid.
        PayloadValidationError: the payload does not match the registered schema.
        PayloadSerializationError: the payload cannot be serialised to JSON.
        PayloadTooLargeError: the serialised payload exceeds the outbox's limit.
        MissingContextError: no request, unit of work or middleware_id is there to take it.
        ConfigurationError: a ``*_DISABLE_DISPATCH`` variable is set to a non-boolean value.
    """
    name, payload = _resolve(
        event_name_or_model,
        payload,
        event_name,
        validate_payload,
        payload_schema_cls_dict_args,
        payload_schema_registry,
        payload_schema_dump,
    )
    _check_key(name, key)
    headers_json = _encode_headers(name, headers)
    delay_by = _delay(name, delay)
    payload_json = _json.encode(payload, event_name=name)
    event_id = uuid7()
    if _dispatch_disabled():
        return event_id

    unit = unit_of_work.current()
    outbox = unit.outbox if unit is not None else _outbox_of_middleware(middleware_id)
    size = len(payload_json.encode("utf-8"))
    if size > outbox.max_payload_size:
        raise PayloadTooLargeError(
            f"payload of event {name!r} is {size} bytes serialised; "
            f"the outbox accepts at most {outbox.max_payload_size}"
        )
    now = outbox.clock()
    event = unit_of_work.PendingEvent(
        id=event_id,
        name=name,
        payload=payload_json,
        key=key,
        headers=headers_json,
        trace_context=_tracing.current_trace_context(),
        created_at=now,
        available_at=_available_at(name, now, delay_by),
    )
    if unit is not None:
        unit.add(event)
    else:
        outbox.write_detached(event)
    return event_id


def _resolve(
    event_name_or_model: Any,
    payload: Any,
    event_name: EventName | None,
    validate_payload: bool,
    dump_args: dict[str, Any] | None,
    schema_registry: BaseEventPayloadSchemaRegistry | None,
    dump: bool,
) -> tuple[str, Any]:
    """The stored event name and the payload to serialise."""
    if isinstance(event_name_or_model, BaseModel):
        if payload is not None and payload != {}:
            raise DispatchError(
                "both a pydantic model and a payload were given to dispatch(); pass one of them"
            )
        raw_name = (
            event_name
            if event_name is not None
            else getattr(event_name_or_model, "__event_name__", None)
        )
        if raw_name is None:
            raise EventNameError(
                f"cannot tell the event name of {type(event_name_or_model).__name__}: pass "
                "event_name=... or set __event_name__ on the model"
            )
        name = event_name_str(raw_name)
        model_payload = _dump(event_name_or_model, dump_args) if dump else event_name_or_model
        return name, model_payload

    raw_name = event_name if event_name is not None else event_name_or_model
    if raw_name is None:
        raise EventNameError("dispatch() needs an event name: dispatch('order.paid', payload)")
    if event_name is not None and not isinstance(event_name_or_model, (str, enum.Enum, type(None))):
        raise DispatchError(
            f"dispatch() got a {type(event_name_or_model).__name__} as its first argument; pass "
            "an event name or a pydantic model"
        )
    name = event_name_str(raw_name)
    if validate_payload and (payload is None or isinstance(payload, dict)):
        schema = (schema_registry if schema_registry is not None else default_registry).get(name)
        if schema is not None:
            fields = payload or {}
            bad_keys = [field for field in fields if not isinstance(field, str)]
            if bad_keys:
                raise PayloadValidationError(
                    f"payload of event {name!r} does not match schema {schema.__name__}: "
                    f"field names must be str, got {bad_keys[0]!r}"
                )
            try:
                model = schema(**fields)
            except ValidationError as exc:
                raise PayloadValidationError(_describe_validation(name, schema, exc)) from exc
            payload = _dump(model, dump_args) if dump else model
    return name, payload


def _dump(model: BaseModel, dump_args: dict[str, Any] | None) -> Any:
    """The model's fields as JSON-compatible data (``mode="json"`` unless the caller chose),
    so that what pydantic can put in JSON (URLs, timedeltas, ...) is stored as pydantic would."""
    return model.model_dump(**{"mode": "json", **(dump_args or {})})


def _describe_validation(name: str, schema: type[BaseModel], exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(payload)'}: {error['msg']}"
        for error in exc.errors()
    )
    return f"payload of event {name!r} does not match schema {schema.__name__}: {problems}"


def _check_key(name: str, key: str | None) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not key:
        raise DispatchError(f"key of event {name!r} must be a non-empty str, got {key!r}")
    if len(key) > MAX_NAME_LENGTH:
        raise DispatchError(
            f"key of event {name!r} is {len(key)} characters long; at most {MAX_NAME_LENGTH}"
        )
    problem = text_problem(key)
    if problem:
        raise DispatchError(f"key {key!r} of event {name!r} {problem}")


def _encode_headers(name: str, headers: Mapping[str, str] | None) -> str | None:
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise DispatchError(
            f"headers of event {name!r} must be a mapping of str to str, got "
            f"{type(headers).__name__}"
        )
    if not headers:
        return None
    for header, value in headers.items():
        if not isinstance(header, str) or not isinstance(value, str):
            raise DispatchError(
                f"headers of event {name!r} must map str to str; {header!r}: {value!r} does not"
            )
    return _json.encode(dict(headers), event_name=name, what="headers")


def _delay(name: str, delay: timedelta | float | None) -> timedelta | None:
    """``delay`` as a timedelta (None for no delay); raises DispatchError if it is not a
    finite, non-negative duration."""
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise DispatchError(
            f"delay of event {name!r} must be a timedelta or a finite number of seconds >= 0, "
            f"got {delay!r}"
        )
    if isinstance(delay, timedelta):
        return delay or None
    try:
        return timedelta(seconds=seconds) or None
    except OverflowError as exc:
        raise DispatchError(f"delay of event {name!r} is too long: {delay!r}") from exc


def _available_at(name: str, now: datetime, delay: timedelta | None) -> datetime:
    if delay is None:
        return now
    try:
        return now + delay
    except OverflowError as exc:
        raise DispatchError(f"delay of event {name!r} is too long: {delay!r}") from exc


def _dispatch_disabled() -> bool:
    for variable in DISABLE_DISPATCH_ENV_VARS:
        value = os.environ.get(variable, "").strip().lower()
        if value in _TRUE:
            return True
        if value not in _FALSE:
            raise ConfigurationError(
                f"{variable}={value!r} is not a boolean; use 1/0, true/false, yes/no or on/off"
            )
    return False


def _outbox_of_middleware(middleware_id: int | None) -> Any:
    from outbox_events import middleware  # the middleware registers itself by id

    outbox = middleware.outbox_for_id(middleware_id) if middleware_id is not None else None
    if outbox is None:
        raise MissingContextError()
    return outbox
