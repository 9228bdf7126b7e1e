"""The payload schema registry: every way fastapi-events users register a schema still works."""

from __future__ import annotations

import enum

import pydantic
import pytest

from outbox_events import EventNameError
from outbox_events.registry.payload_schema import (
    BaseEventPayloadSchemaRegistry,
    EventPayloadSchemaRegistry,
    registry,
)


class UserEvents(str, enum.Enum):
    SIGNED_UP = "user.signed_up"


class SignedUp(pydantic.BaseModel):
    __event_name__ = "user.signed_up"

    user_id: int


class Anonymous(pydantic.BaseModel):
    user_id: int


@pytest.fixture
def schemas() -> EventPayloadSchemaRegistry:
    return EventPayloadSchemaRegistry()


def test_the_global_registry_is_a_schema_registry() -> None:
    assert isinstance(registry, EventPayloadSchemaRegistry)
    assert isinstance(registry, BaseEventPayloadSchemaRegistry)


def test_bare_decorator_uses_the_models_event_name(schemas: EventPayloadSchemaRegistry) -> None:
    @schemas.register
    class Registered(pydantic.BaseModel):
        __event_name__ = "user.deleted"

        user_id: int

    assert schemas["user.deleted"] is Registered


def test_decorator_with_event_name(schemas: EventPayloadSchemaRegistry) -> None:
    @schemas.register(event_name="user.renamed")
    class Renamed(pydantic.BaseModel):
        name: str

    assert schemas["user.renamed"] is Renamed


def test_decorator_with_the_event_name_as_its_only_argument(
    schemas: EventPayloadSchemaRegistry,
) -> None:
    @schemas.register("user.renamed")
    class Renamed(pydantic.BaseModel):
        name: str

    assert schemas["user.renamed"] is Renamed


def test_plain_call_registers_and_returns_the_model(schemas: EventPayloadSchemaRegistry) -> None:
    returned = schemas.register(SignedUp)

    assert returned is SignedUp
    assert schemas["user.signed_up"] is SignedUp


def test_an_explicit_event_name_wins_over_the_models_own(
    schemas: EventPayloadSchemaRegistry,
) -> None:
    schemas.register(SignedUp, event_name="user.joined")

    assert dict(schemas) == {"user.joined": SignedUp}


def test_an_enum_member_and_its_value_are_the_same_key(schemas: EventPayloadSchemaRegistry) -> None:
    schemas.register(Anonymous, event_name=UserEvents.SIGNED_UP)

    assert list(schemas) == ["user.signed_up"]
    assert UserEvents.SIGNED_UP in schemas and "user.signed_up" in schemas
    assert schemas[UserEvents.SIGNED_UP] is schemas["user.signed_up"] is Anonymous
    assert schemas.get(UserEvents.SIGNED_UP) is Anonymous


def test_a_model_without_any_event_name_cannot_be_registered(
    schemas: EventPayloadSchemaRegistry,
) -> None:
    with pytest.raises(EventNameError, match=r"Anonymous.*event_name"):
        schemas.register(Anonymous)
    with pytest.raises(EventNameError):
        schemas.register()(Anonymous)

    assert len(schemas) == 0


@pytest.mark.parametrize("name", ["", "   ", 7], ids=repr)
def test_an_invalid_event_name_is_rejected_when_register_is_called(
    schemas: EventPayloadSchemaRegistry, name: object
) -> None:
    with pytest.raises(EventNameError):
        schemas.register(event_name=name)  # type: ignore[call-overload]


class NotAModel:
    __event_name__ = "not.a.model"


@pytest.mark.parametrize(
    "schema",
    [NotAModel, SignedUp(user_id=1), dict],
    ids=["plain class", "model instance", "builtin type"],
)
def test_only_pydantic_model_classes_can_be_registered(
    schemas: EventPayloadSchemaRegistry, schema: object
) -> None:
    with pytest.raises(TypeError, match="pydantic model class"):
        schemas.register(event_name="x")(schema)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="pydantic model class"):
        schemas["x"] = schema  # type: ignore[assignment]

    assert len(schemas) == 0


def test_the_event_name_cannot_be_given_twice(schemas: EventPayloadSchemaRegistry) -> None:
    with pytest.raises(TypeError, match="twice"):
        schemas.register("a", event_name="b")


def test_looking_up_something_that_is_not_an_event_name_finds_nothing(
    schemas: EventPayloadSchemaRegistry,
) -> None:
    schemas.register(SignedUp)

    assert 42 not in schemas  # type: ignore[comparison-overlap]
    assert schemas.get(42) is None  # type: ignore[call-overload]
    with pytest.raises(KeyError):
        schemas[42]


def test_registries_are_independent(schemas: EventPayloadSchemaRegistry) -> None:
    schemas.register(SignedUp, event_name="only.here")

    assert "only.here" not in EventPayloadSchemaRegistry()
    assert "only.here" not in registry
