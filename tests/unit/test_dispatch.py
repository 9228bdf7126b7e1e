"""What ``dispatch()`` does with what it is given: names, schemas, ids, options, switches.

Each test dispatches into a unit of work of an Outbox over a private SQLite file and looks at
what a destination receives (or what the table holds), as a user of the library would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa

from outbox_events import (
    ConfigurationError,
    DispatchError,
    Event,
    EventNameError,
    MissingContextError,
    Outbox,
    PayloadValidationError,
    dispatch,
)
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.registry.payload_schema import EventPayloadSchemaRegistry
from outbox_events.registry.payload_schema import registry as global_registry
from tests.helpers import FakeClock

DISABLE_VARIABLES = ("OUTBOX_EVENTS_DISABLE_DISPATCH", "FASTAPI_EVENTS_DISABLE_DISPATCH")
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class Recorder(BaseEventHandler):
    """A destination that keeps every event it receives."""

    def __init__(self) -> None:
        super().__init__(name="recorder")
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)


@dataclasses.dataclass
class Harness:
    """An Outbox, the one destination it delivers to, and the clock it reads."""

    outbox: Outbox
    recorder: Recorder
    clock: FakeClock

    async def deliver(self, *args: Any, **kwargs: Any) -> Event:
        """Dispatch one event in a unit of work, drain, and return what the destination got."""
        async with self.outbox.unit_of_work():
            event_id = dispatch(*args, **kwargs)
        await self.outbox.drain()
        [event] = [event for event in self.recorder.events if event.id == event_id]
        return event

    async def payload_of(self, *args: Any, **kwargs: Any) -> Any:
        return (await self.deliver(*args, **kwargs)).payload

    async def stored_rows(self) -> list[dict[str, Any]]:
        """The outbox table's rows, in insertion order."""
        table = self.outbox.store.table
        async with self.outbox.engine.connect() as connection:
            result = await connection.execute(sa.select(table).order_by(table.c.id))
            return [dict(row._mapping) for row in result]


@pytest.fixture(autouse=True)
def dispatch_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the environment running the suite says, dispatch is on unless a test says so."""
    for variable in DISABLE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """An Outbox over a fresh SQLite file (migrated here, in the test's own event loop), with
    one destination that records everything and a clock the test controls."""
    recorder, clock = Recorder(), FakeClock(START)
    outbox = Outbox(
        f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}",
        handlers=[recorder],
        clock=clock,
        retention=dt.timedelta(days=1),  # keep delivered rows so tests can inspect them
    )
    await outbox.migrate()
    yield Harness(outbox, recorder, clock)
    await outbox.close()


@pytest.fixture
def schemas() -> EventPayloadSchemaRegistry:
    """A registry of this test's own, so nothing leaks into the global one."""
    return EventPayloadSchemaRegistry()


class OrderEvents(str, enum.Enum):
    PAID = "order.paid"


class Numbered(enum.Enum):
    SHIPPED = 3


class OrderPaid(pydantic.BaseModel):
    __event_name__ = "order.paid"

    order_id: int
    currency: str = "EUR"


class Unnamed(pydantic.BaseModel):
    order_id: int


# -- name resolution ---------------------------------------------------------------------------


async def test_a_str_name_is_delivered_as_given(harness: Harness) -> None:
    event = await harness.deliver("order.paid", {"order_id": 1})

    assert tuple(event) == ("order.paid", {"order_id": 1})


@pytest.mark.parametrize(
    ("member", "stored_name"),
    [(OrderEvents.PAID, "order.paid"), (Numbered.SHIPPED, "SHIPPED")],
    ids=["str-valued enum: its value", "int-valued enum: its member name"],
)
async def test_an_enum_member_is_stored_as_its_str_value_or_else_its_name(
    harness: Harness, member: enum.Enum, stored_name: str
) -> None:
    event = await harness.deliver(member, {"n": 1})

    assert event.name == stored_name
    assert type(event.name) is str


@pytest.mark.parametrize(
    ("registered_as", "dispatched_as"),
    [(OrderEvents.PAID, "order.paid"), ("order.paid", OrderEvents.PAID)],
    ids=["registered as member, dispatched as value", "registered as value, dispatched as member"],
)
async def test_an_enum_member_and_its_value_find_the_same_schema(
    harness: Harness,
    schemas: EventPayloadSchemaRegistry,
    registered_as: str | enum.Enum,
    dispatched_as: str | enum.Enum,
) -> None:
    schemas.register(OrderPaid, event_name=registered_as)

    payload = await harness.payload_of(
        dispatched_as, {"order_id": "7"}, payload_schema_registry=schemas
    )
    with pytest.raises(PayloadValidationError):
        dispatch(dispatched_as, {"order_id": "seven"}, payload_schema_registry=schemas)

    assert payload == {"order_id": 7, "currency": "EUR"}, "the schema was not applied"


async def test_a_model_with_an_event_name_is_dispatched_as_its_dump_with_defaults(
    harness: Harness,
) -> None:
    event = await harness.deliver(OrderPaid(order_id=5))

    assert event.name == "order.paid"
    assert event.payload == {"order_id": 5, "currency": "EUR"}, "default values must be kept"


async def test_an_explicit_event_name_wins_over_the_models_event_name(harness: Harness) -> None:
    event = await harness.deliver(OrderPaid(order_id=5), event_name="order.refunded")

    assert event.name == "order.refunded"


async def test_an_explicit_event_name_names_a_model_without_one(harness: Harness) -> None:
    event = await harness.deliver(Unnamed(order_id=5), event_name="order.legacy")

    assert tuple(event) == ("order.legacy", {"order_id": 5})


async def test_a_model_and_a_payload_together_are_rejected(harness: Harness) -> None:
    async with harness.outbox.unit_of_work():
        with pytest.raises(DispatchError, match="pydantic model and a payload"):
            dispatch(OrderPaid(order_id=5), {"order_id": 6})

    assert await harness.stored_rows() == []


async def test_a_model_without_any_event_name_is_rejected(harness: Harness) -> None:
    async with harness.outbox.unit_of_work():
        with pytest.raises(EventNameError, match=r"Unnamed.*__event_name__"):
            dispatch(Unnamed(order_id=5))


async def test_a_model_dump_takes_payload_schema_cls_dict_args(harness: Harness) -> None:
    payload = await harness.payload_of(
        OrderPaid(order_id=5), payload_schema_cls_dict_args={"exclude_unset": True}
    )

    assert payload == {"order_id": 5}


# -- payload schemas -------------------------------------------------------------------------


async def test_a_valid_payload_is_stored_as_the_schemas_dump_with_defaults(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(OrderPaid)

    payload = await harness.payload_of(
        "order.paid", {"order_id": "5"}, payload_schema_registry=schemas
    )

    assert payload == {"order_id": 5, "currency": "EUR"}


async def test_payload_schema_cls_dict_args_reach_the_dump(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(OrderPaid)

    payload = await harness.payload_of(
        "order.paid",
        {"order_id": 5},
        payload_schema_registry=schemas,
        payload_schema_cls_dict_args={"exclude_unset": True},
    )

    assert payload == {"order_id": 5}, "exclude_unset=True should leave the default out"


async def test_without_payload_schema_dump_the_validated_model_is_still_stored_as_json(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(OrderPaid)

    payload = await harness.payload_of(
        "order.paid", {"order_id": "5"}, payload_schema_registry=schemas, payload_schema_dump=False
    )

    assert payload == {"order_id": 5, "currency": "EUR"}


async def test_validate_payload_false_stores_the_payload_unchecked(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(OrderPaid)

    payload = await harness.payload_of(
        "order.paid",
        {"order_id": "not a number"},
        payload_schema_registry=schemas,
        validate_payload=False,
    )

    assert payload == {"order_id": "not a number"}


async def test_a_custom_registry_is_used_instead_of_the_global_one(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(OrderPaid, event_name="custom.only")
    assert "custom.only" not in global_registry

    validated = await harness.payload_of(
        "custom.only", {"order_id": "1"}, payload_schema_registry=schemas
    )
    unvalidated = await harness.payload_of("custom.only", {"order_id": "1"})

    assert validated == {"order_id": 1, "currency": "EUR"}
    assert unvalidated == {"order_id": "1"}, "the global registry has no schema for this name"


async def test_the_global_registry_validates_by_default(harness: Harness) -> None:
    global_registry.register(OrderPaid, event_name="global.order.paid")
    try:
        payload = await harness.payload_of("global.order.paid", {"order_id": "3"})
    finally:
        del global_registry["global.order.paid"]

    assert payload == {"order_id": 3, "currency": "EUR"}


class Line(pydantic.BaseModel):
    sku: str
    price: decimal.Decimal


class Order(pydantic.BaseModel):
    lines: list[Line]


async def test_a_schema_violation_names_the_event_and_the_offending_field(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(Order, event_name="order.placed")
    payload = {"lines": [{"sku": "a", "price": "1.50"}, {"sku": "b", "price": "free"}]}

    async with harness.outbox.unit_of_work():
        with pytest.raises(PayloadValidationError) as raised:
            dispatch("order.placed", payload, payload_schema_registry=schemas)

    message = str(raised.value)
    assert "'order.placed'" in message and "lines.1.price" in message, message
    assert isinstance(raised.value.__cause__, pydantic.ValidationError)
    assert await harness.stored_rows() == []


async def test_a_payload_with_non_str_keys_is_a_validation_error_not_a_crash(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(OrderPaid)

    with pytest.raises(PayloadValidationError, match=r"'order.paid'.*must be str, got 1"):
        dispatch("order.paid", {1: 5}, payload_schema_registry=schemas)


class Webhook(pydantic.BaseModel):
    url: pydantic.HttpUrl
    timeout: dt.timedelta = dt.timedelta(seconds=30)


async def test_schema_types_are_stored_the_way_pydantic_writes_them_to_json(
    harness: Harness, schemas: EventPayloadSchemaRegistry
) -> None:
    schemas.register(Webhook, event_name="webhook.added")

    payload = await harness.payload_of(
        "webhook.added", {"url": "https://example.org/hook"}, payload_schema_registry=schemas
    )

    assert payload == {"url": "https://example.org/hook", "timeout": "PT30S"}


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_common_python_values_are_stored_as_json(harness: Harness) -> None:
    event_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    payload = {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 1, 2),
        "id": event_id,
        "amount": decimal.Decimal("9.99"),
        "colour": Colour.RED,
        "point": Point(1, 2),
        "pair": (1, 2),
        "tags": {"nested": {"only"}},
        "line": Line(sku="a", price=decimal.Decimal("1.5")),
    }

    stored = await harness.payload_of("values.sent", payload)

    assert stored == {
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "id": str(event_id),
        "amount": "9.99",
        "colour": "red",
        "point": {"x": 1, "y": 2},
        "pair": [1, 2],
        "tags": {"nested": ["only"]},
        "line": {"sku": "a", "price": "1.5"},
    }


# -- ids ---------------------------------------------------------------------------------------


async def test_dispatch_returns_time_ordered_uuid7_ids(harness: Harness) -> None:
    async with harness.outbox.unit_of_work():
        ids = [dispatch("tick", {"n": n}) for n in range(500)]

    assert all(isinstance(event_id, uuid.UUID) and event_id.version == 7 for event_id in ids)
    assert ids == sorted(ids), "ids of consecutive dispatches must increase"
    assert len(set(ids)) == len(ids)


async def test_the_returned_id_is_the_delivered_events_id(harness: Harness) -> None:
    async with harness.outbox.unit_of_work():
        ids = [dispatch("tick", {"n": n}) for n in range(3)]
    await harness.outbox.drain()

    delivered = {event.payload["n"]: event.id for event in harness.recorder.events}
    assert delivered == dict(enumerate(ids))


# -- key, headers, delay -----------------------------------------------------------------------


async def test_key_headers_and_dispatch_time_travel_with_the_event(harness: Harness) -> None:
    event = await harness.deliver(
        "order.paid", {"order_id": 1}, key="order-1", headers={"tenant": "acme", "via": "api"}
    )

    assert event.key == "order-1"
    assert event.headers == {"tenant": "acme", "via": "api"}
    assert event.created_at == START
    assert event.attempt == 1


async def test_an_event_without_key_or_headers_has_none_and_empty_headers(
    harness: Harness,
) -> None:
    event = await harness.deliver("order.paid", {"order_id": 1})

    assert event.key is None
    assert event.headers == {}


@pytest.mark.parametrize("delay", [dt.timedelta(minutes=5), 300, 300.0], ids=type)
async def test_a_delayed_event_is_not_delivered_before_its_delay_has_passed(
    harness: Harness, delay: dt.timedelta | float
) -> None:
    async with harness.outbox.unit_of_work():
        event_id = dispatch("reminder.due", {"n": 1}, delay=delay)

    harness.clock.advance(299)
    early = await harness.outbox.drain()
    harness.clock.advance(1)
    due = await harness.outbox.drain()

    assert early.attempted == 0, "delivered before its delay had passed"
    assert due.delivered == 1
    assert [event.id for event in harness.recorder.events] == [event_id]


async def test_a_zero_delay_is_deliverable_at_once(harness: Harness) -> None:
    async with harness.outbox.unit_of_work():
        dispatch("reminder.due", {"n": 1}, delay=0)

    assert (await harness.outbox.drain()).delivered == 1


# -- switching dispatch off --------------------------------------------------------------------


@pytest.mark.parametrize("variable", DISABLE_VARIABLES)
@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
async def test_a_truthy_disable_variable_makes_dispatch_store_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    async with harness.outbox.unit_of_work():
        event_id = dispatch("order.paid", {"order_id": 1})

    assert isinstance(event_id, uuid.UUID)
    assert await harness.stored_rows() == []
    assert (await harness.outbox.drain()).attempted == 0


async def test_a_disabled_dispatch_needs_no_unit_of_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_EVENTS_DISABLE_DISPATCH", "1")

    dispatch("order.paid", {"order_id": 1})  # no MissingContextError: nothing to store


@pytest.mark.parametrize("variable", DISABLE_VARIABLES)
async def test_a_disabled_dispatch_still_rejects_bad_input(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    schemas: EventPayloadSchemaRegistry,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, "true")
    schemas.register(OrderPaid)

    with pytest.raises(PayloadValidationError):
        dispatch("order.paid", {"order_id": "x"}, payload_schema_registry=schemas)
    with pytest.raises(EventNameError):
        dispatch("", {})


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
async def test_a_falsy_disable_variable_leaves_dispatch_on(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    for variable in DISABLE_VARIABLES:
        monkeypatch.setenv(variable, value)

    event = await harness.deliver("order.paid", {"order_id": 1})

    assert event.payload == {"order_id": 1}


@pytest.mark.parametrize("variable", DISABLE_VARIABLES)
async def test_a_non_boolean_disable_variable_is_a_configuration_error_naming_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "sometimes")

    async with harness.outbox.unit_of_work():
        with pytest.raises(ConfigurationError) as raised:
            dispatch("order.paid", {"order_id": 1})

    assert variable in str(raised.value)
    assert "sometimes" in str(raised.value)


# -- outside any unit of work ------------------------------------------------------------------


def test_dispatch_outside_a_request_or_unit_of_work_says_what_to_do() -> None:
    with pytest.raises(MissingContextError) as raised:
        dispatch("order.paid", {"order_id": 1})

    assert isinstance(raised.value, LookupError)
    message = str(raised.value)
    assert "outbox.unit_of_work()" in message and "middleware" in message.lower(), message


def test_dispatch_with_an_unknown_middleware_id_is_a_missing_context_error() -> None:
    with pytest.raises(MissingContextError):
        dispatch("order.paid", {"order_id": 1}, middleware_id=-12345)


async def test_dispatch_in_a_task_spawned_inside_a_unit_of_work_joins_it(
    harness: Harness,
) -> None:
    async with harness.outbox.unit_of_work():
        event_id = await asyncio.create_task(_dispatch_later("job.done"))

    assert [row["event_id"] for row in await harness.stored_rows()] == [event_id]


async def _dispatch_later(name: str) -> uuid.UUID:
    return dispatch(name, {})
