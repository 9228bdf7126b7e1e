"""``Event``: what handlers receive, usable both as fastapi-events' tuple and as a record."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone

import pytest

from outbox_events import Event

EVENT_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
CREATED = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def make_event() -> Event:
    return Event(
        name="order.paid",
        payload={"order_id": 7},
        id=EVENT_ID,
        key="order-7",
        headers={"tenant": "acme"},
        created_at=CREATED,
        attempt=3,
    )


def test_an_event_unpacks_as_name_and_payload() -> None:
    event_name, payload = make_event()

    assert (event_name, payload) == ("order.paid", {"order_id": 7})


def test_an_event_indexes_like_a_name_payload_tuple() -> None:
    event = make_event()

    assert event[0] == "order.paid"
    assert event[1] == {"order_id": 7}
    assert event[-1] == {"order_id": 7}
    assert len(event) == 2
    assert tuple(event) == ("order.paid", {"order_id": 7})
    with pytest.raises(IndexError):
        event[2]


def test_an_event_exposes_its_delivery_details() -> None:
    event = make_event()

    assert event.id == EVENT_ID
    assert event.name == "order.paid"
    assert event.payload == {"order_id": 7}
    assert event.key == "order-7"
    assert event.headers == {"tenant": "acme"}
    assert event.created_at == CREATED
    assert event.attempt == 3


def test_an_event_built_with_name_payload_and_id_has_neutral_defaults() -> None:
    event = Event(name="order.paid", payload=None, id=EVENT_ID)

    assert event.key is None
    assert event.headers == {}
    assert event.attempt == 1


def test_an_event_cannot_be_changed_by_a_handler() -> None:
    event = make_event()

    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "order.refunded"  # type: ignore[misc]


def test_an_event_equals_the_name_and_payload_tuple_fastapi_events_handed_out() -> None:
    event = Event(name="order.paid", payload={"id": 1}, id=uuid.uuid4())

    assert event == ("order.paid", {"id": 1})
    assert event != ("order.paid", {"id": 2})
    assert event != Event(name="order.paid", payload={"id": 1}, id=uuid.uuid4())


def test_an_event_json_encodes_like_fastapi_events_tuple() -> None:
    import json

    assert json.loads(json.dumps(make_event())) == ["order.paid", {"order_id": 7}]
