"""Bad input to ``dispatch()`` (DESIGN §7) fails at the call site and leaves nothing behind.

Every case runs on SQLite and PostgreSQL: the bad call raises a library error that names the
event and the offending part, the unit of work carries on, and when it ends the table holds
exactly the valid events dispatched around the bad one.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa

from outbox_events import (
    DispatchError,
    Event,
    EventNameError,
    Outbox,
    PayloadSerializationError,
    PayloadTooLargeError,
    PayloadValidationError,
    dispatch,
)
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.registry.payload_schema import EventPayloadSchemaRegistry

MAX_PAYLOAD_SIZE = 1024  # bytes; small, so that an oversized payload is cheap to build


class Recorder(BaseEventHandler):
    def __init__(self) -> None:
        super().__init__(name="recorder")
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)


class OrderPlaced(pydantic.BaseModel):
    __event_name__ = "order.placed"

    order_id: int


SCHEMAS = EventPayloadSchemaRegistry()
SCHEMAS.register(OrderPlaced)


def _self_referencing() -> dict[str, Any]:
    payload: dict[str, Any] = {"items": []}
    payload["items"].append(payload)
    return payload


@dataclasses.dataclass(frozen=True)
class BadCall:
    """One way of calling dispatch() wrongly, and what the error must say."""

    id: str
    call: Callable[[], object]
    error: type[Exception]
    says: tuple[str, ...]  # fragments the error message must contain


BAD_CALLS = [
    # payloads
    BadCall(
        "unserialisable object nested in a list",
        lambda: dispatch("order.placed", {"items": [1, object()]}),
        PayloadSerializationError,
        ("'order.placed'", "payload['items'][1]"),
    ),
    BadCall(
        "NaN",
        lambda: dispatch("order.placed", {"total": math.nan}),
        PayloadSerializationError,
        ("'order.placed'", "payload['total']"),
    ),
    BadCall(
        "infinity nested",
        lambda: dispatch("order.placed", {"totals": [1.0, -math.inf]}),
        PayloadSerializationError,
        ("'order.placed'", "payload['totals'][1]"),
    ),
    BadCall(
        "payload that contains itself",
        lambda: dispatch("order.placed", _self_referencing()),
        PayloadSerializationError,
        ("'order.placed'", "payload['items'][0]"),
    ),
    BadCall(
        "lone surrogate in a string",
        lambda: dispatch("order.placed", {"note": "bad \ud800 text"}),
        PayloadSerializationError,
        ("'order.placed'", "payload['note']"),
    ),
    BadCall(
        "payload larger than max_payload_size",
        lambda: dispatch("order.placed", {"blob": "x" * MAX_PAYLOAD_SIZE}),
        PayloadTooLargeError,
        ("'order.placed'", str(MAX_PAYLOAD_SIZE)),
    ),
    BadCall(
        "schema violation",
        lambda: dispatch("order.placed", {"order_id": "seven"}, payload_schema_registry=SCHEMAS),
        PayloadValidationError,
        ("'order.placed'", "order_id"),
    ),
    BadCall(
        "model and payload together",
        lambda: dispatch(OrderPlaced(order_id=1), {"order_id": 2}),
        DispatchError,
        ("model and a payload",),
    ),
    # names
    BadCall("empty name", lambda: dispatch("", {}), EventNameError, ("empty",)),
    BadCall("whitespace name", lambda: dispatch(" \t ", {}), EventNameError, ("empty",)),
    BadCall("int name", lambda: dispatch(42, {}), EventNameError, ("int", "42")),  # type: ignore[arg-type]
    BadCall("None name", lambda: dispatch(None, {}), EventNameError, ("event name",)),
    BadCall("bytes name", lambda: dispatch(b"order.placed", {}), EventNameError, ("bytes",)),  # type: ignore[arg-type]
    BadCall("name of 256 characters", lambda: dispatch("n" * 256, {}), EventNameError, ("255",)),
    BadCall("NUL in name", lambda: dispatch("order\x00placed", {}), EventNameError, ("NUL",)),
    BadCall(
        "lone surrogate in name", lambda: dispatch("order\udc80", {}), EventNameError, ("Unicode",)
    ),
    # keys
    BadCall(
        "empty key",
        lambda: dispatch("order.placed", {}, key=""),
        DispatchError,
        ("'order.placed'", "key"),
    ),
    BadCall(
        "int key",
        lambda: dispatch("order.placed", {}, key=7),  # type: ignore[arg-type]
        DispatchError,
        ("'order.placed'", "key", "7"),
    ),
    BadCall(
        "key of 256 characters",
        lambda: dispatch("order.placed", {}, key="k" * 256),
        DispatchError,
        ("'order.placed'", "key", "255"),
    ),
    BadCall(
        "NUL in key",
        lambda: dispatch("order.placed", {}, key="order\x007"),
        DispatchError,
        ("'order.placed'", "key", "NUL"),
    ),
    # headers
    BadCall(
        "non-str header value",
        lambda: dispatch("order.placed", {}, headers={"retries": 3}),  # type: ignore[dict-item]
        DispatchError,
        ("'order.placed'", "headers", "'retries'"),
    ),
    BadCall(
        "non-str header name",
        lambda: dispatch("order.placed", {}, headers={1: "one"}),  # type: ignore[dict-item]
        DispatchError,
        ("'order.placed'", "headers"),
    ),
    BadCall(
        "headers that are not a mapping",
        lambda: dispatch("order.placed", {}, headers=[("a", "b")]),  # type: ignore[arg-type]
        DispatchError,
        ("'order.placed'", "headers", "list"),
    ),
    BadCall(
        "lone surrogate in a header",
        lambda: dispatch("order.placed", {}, headers={"note": "\ud800"}),
        PayloadSerializationError,
        ("'order.placed'", "headers['note']"),
    ),
    # delays
    BadCall(
        "negative delay in seconds",
        lambda: dispatch("order.placed", {}, delay=-1),
        DispatchError,
        ("'order.placed'", "delay", "-1"),
    ),
    BadCall(
        "negative timedelta",
        lambda: dispatch("order.placed", {}, delay=timedelta(seconds=-1)),
        DispatchError,
        ("'order.placed'", "delay"),
    ),
    BadCall(
        "NaN delay",
        lambda: dispatch("order.placed", {}, delay=math.nan),
        DispatchError,
        ("'order.placed'", "delay"),
    ),
    BadCall(
        "delay beyond the calendar",
        lambda: dispatch("order.placed", {}, delay=timedelta(days=999_999_999)),
        DispatchError,
        ("'order.placed'", "delay"),
    ),
    BadCall(
        "delay that is not a number",
        lambda: dispatch("order.placed", {}, delay="5"),  # type: ignore[arg-type]
        DispatchError,
        ("'order.placed'", "delay"),
    ),
]


@pytest.mark.parametrize("bad", BAD_CALLS, ids=[bad.id for bad in BAD_CALLS])
async def test_bad_input_raises_at_the_call_site_and_only_rejects_itself(
    make_outbox: Callable[..., Outbox], bad: BadCall
) -> None:
    recorder = Recorder()
    outbox = make_outbox(handlers=[recorder], max_payload_size=MAX_PAYLOAD_SIZE)

    async with outbox.unit_of_work():
        before = dispatch("order.placed", {"order_id": 1})
        with pytest.raises(bad.error) as raised:
            bad.call()
        after = dispatch("order.placed", {"order_id": 2})

    message = str(raised.value)
    for fragment in bad.says:
        assert fragment in message, f"{fragment!r} missing from the error: {message}"
    assert await stored_event_ids(outbox) == [before, after], "the table holds a bad event"
    await outbox.drain()
    assert [event.payload for event in recorder.events] == [{"order_id": 1}, {"order_id": 2}]


async def test_a_bad_dispatch_that_escapes_the_unit_of_work_stores_nothing(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(handlers=[Recorder()])

    with pytest.raises(PayloadSerializationError):
        async with outbox.unit_of_work():
            dispatch("order.placed", {"order_id": 1})
            dispatch("order.placed", {"order_id": object()})

    assert await stored_event_ids(outbox) == []


async def test_a_payload_of_exactly_max_payload_size_is_accepted(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(handlers=[Recorder()], max_payload_size=MAX_PAYLOAD_SIZE)
    room = MAX_PAYLOAD_SIZE - len('{"blob":""}')
    # characters count by their UTF-8 size: "é" is 2 bytes, so this is exactly the limit
    payload = {"blob": "é" * (room // 2) + "x" * (room % 2)}

    async with outbox.unit_of_work():
        event_id = dispatch("order.placed", payload)
        with pytest.raises(PayloadTooLargeError):
            dispatch("order.placed", {"blob": payload["blob"] + "é"})

    assert await stored_event_ids(outbox) == [event_id]


async def stored_event_ids(outbox: Outbox) -> list[uuid.UUID]:
    """The event ids in the outbox table, in insertion order."""
    table = outbox.store.table
    async with outbox.engine.connect() as connection:
        result = await connection.execute(sa.select(table.c.event_id).order_by(table.c.id))
        return list(result.scalars())
