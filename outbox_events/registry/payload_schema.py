"""The payload schema registry: pydantic models that validate payloads at dispatch time."""

from __future__ import annotations

import enum
from collections import UserDict
from collections.abc import Callable
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from outbox_events.exceptions import EventNameError
from outbox_events.names import EventName, event_name_str

__all__ = ["BaseEventPayloadSchemaRegistry", "EventPayloadSchemaRegistry", "registry"]

SchemaT = TypeVar("SchemaT", bound=type[BaseModel])


class BaseEventPayloadSchemaRegistry(UserDict[str, type[BaseModel]]):
    """Maps event names to pydantic models.

    Keys are stored in their string form, so an Enum member and its value find the same schema.
    """

    def __setitem__(self, key: Any, value: type[BaseModel]) -> None:
        if not (isinstance(value, type) and issubclass(value, BaseModel)):
            raise TypeError(f"payload schema must be a pydantic model class, got {value!r}")
        super().__setitem__(event_name_str(key), value)

    def __getitem__(self, key: Any) -> type[BaseModel]:
        try:
            name = event_name_str(key)
        except EventNameError:
            raise KeyError(key) from None
        return super().__getitem__(name)

    def __contains__(self, key: object) -> bool:
        try:
            return super().__contains__(event_name_str(key))
        except EventNameError:
            return False

    @overload
    def register(self, _schema: SchemaT, event_name: EventName | None = None) -> SchemaT: ...

    @overload
    def register(
        self, _schema: EventName | None = None, event_name: EventName | None = None
    ) -> Callable[[SchemaT], SchemaT]: ...

    def register(
        self, _schema: SchemaT | EventName | None = None, event_name: EventName | None = None
    ) -> SchemaT | Callable[[SchemaT], SchemaT]:
        """Register a pydantic model as the payload schema of an event name.

        Usable as ``@registry.register``, ``@registry.register(event_name=...)``,
        ``@registry.register("order.paid")`` or ``registry.register(Model)``; without an event
        name the model's ``__event_name__`` is used.

        Raises:
            EventNameError: no event name is given and the model has no ``__event_name__``.
            TypeError: the schema is not a pydantic model class.
        """
        if isinstance(_schema, (str, enum.Enum)):
            if event_name is not None:
                raise TypeError("register() got the event name twice; pass event_name= only")
            return self.register(event_name=_schema)
        if event_name is not None:
            event_name_str(event_name)  # a bad name fails here, not when the class is defined

        def _register(schema: SchemaT) -> SchemaT:
            if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
                raise TypeError(f"payload schema must be a pydantic model class, got {schema!r}")
            name = event_name if event_name is not None else getattr(schema, "__event_name__", None)
            if name is None:
                raise EventNameError(
                    f"cannot tell the event name of payload schema {schema.__name__}: give "
                    "register(event_name=...) or set __event_name__ on the model"
                )
            self[name] = schema
            return schema

        if _schema is None:
            return _register
        return _register(_schema)


class EventPayloadSchemaRegistry(BaseEventPayloadSchemaRegistry):
    """The default registry type."""


registry = EventPayloadSchemaRegistry()
