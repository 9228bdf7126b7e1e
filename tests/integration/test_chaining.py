"""Chaining: ``dispatch()`` inside a handler commits with that handler's "delivered" mark."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from outbox_events import (
    Event,
    Outbox,
    PartialDeliveryError,
    RetryPolicy,
    StoreError,
    dispatch,
)
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.handlers.local import LocalHandler
from outbox_events.store.tables import DELIVERED, PENDING
from tests.helpers import outbox_rows

IMMEDIATE_RETRY = RetryPolicy(initial_delay=0, max_delay=0)


async def dispatch_one(outbox: Outbox, name: str, payload: Any) -> uuid.UUID:
    async with outbox.unit_of_work():
        return dispatch(name, payload)


def shipping_handlers(shipped: list[Event], *, fail_first_attempt: bool = False) -> LocalHandler:
    """``ship`` chains ``order.shipped`` for each ``order.paid``; ``notify`` receives it."""
    handlers = LocalHandler()

    @handlers.register(event_name="order.paid", name="ship")
    async def ship(event: Event) -> None:
        dispatch("order.shipped", {"order": event.payload["order"]})
        if fail_first_attempt and event.attempt == 1:
            raise RuntimeError("carrier unavailable")

    @handlers.register(event_name="order.shipped", name="notify")
    async def notify(event: Event) -> None:
        shipped.append(event)

    return handlers


async def refuse_inserts_of(outbox: Outbox, event_name: str) -> None:
    """Make the database itself reject new rows named ``event_name``."""
    table = outbox.store.table.name
    async with outbox.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            await connection.exec_driver_sql(
                f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                f"WHEN NEW.name = '{event_name}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            await connection.exec_driver_sql(
                f"ALTER TABLE {table} ADD CONSTRAINT refuse_{table} "
                f"CHECK (name <> '{event_name}') NOT VALID"
            )


async def test_chained_event_is_stored_with_the_delivered_mark_then_delivered(
    make_outbox: Callable[..., Outbox],
) -> None:
    shipped: list[Event] = []
    outbox = make_outbox(handlers=[shipping_handlers(shipped)])
    paid_id = await dispatch_one(outbox, "order.paid", {"order": 7})

    first = await outbox.relay.run_batch()
    [paid_row] = await outbox_rows(outbox, event_id=paid_id)
    [chained_row] = await outbox_rows(outbox, name="order.shipped")

    assert first.delivered == 1 and paid_row["state"] == DELIVERED
    assert (chained_row["destination"], chained_row["state"]) == ("notify", PENDING)
    assert shipped == [], "the chained event was delivered before it was stored"

    await outbox.drain()

    assert [(event.name, event.payload) for event in shipped] == [("order.shipped", {"order": 7})]
    assert (await outbox_rows(outbox, name="order.shipped"))[0]["state"] == DELIVERED


async def test_delivered_mark_is_not_recorded_if_the_chained_event_cannot_be_stored(
    make_outbox: Callable[..., Outbox],
) -> None:
    shipped: list[Event] = []
    outbox = make_outbox(handlers=[shipping_handlers(shipped)])
    paid_id = await dispatch_one(outbox, "order.paid", {"order": 7})
    await refuse_inserts_of(outbox, "order.shipped")

    with pytest.raises(StoreError):
        await outbox.relay.run_batch()

    [paid_row] = await outbox_rows(outbox, event_id=paid_id)
    assert paid_row["state"] == PENDING, "marked delivered although its chained event was lost"
    assert await outbox_rows(outbox, name="order.shipped") == []


async def test_chained_event_of_a_failed_attempt_is_discarded(
    make_outbox: Callable[..., Outbox],
) -> None:
    shipped: list[Event] = []
    handlers = shipping_handlers(shipped, fail_first_attempt=True)
    outbox = make_outbox(handlers=[handlers], retry=IMMEDIATE_RETRY)
    paid_id = await dispatch_one(outbox, "order.paid", {"order": 7})

    first = await outbox.relay.run_batch()

    assert first.retried == 1
    assert await outbox_rows(outbox, name="order.shipped") == [], (
        "a failed handler's event was stored"
    )

    await outbox.drain()

    [paid_row] = await outbox_rows(outbox, event_id=paid_id)
    assert (paid_row["state"], paid_row["attempts"]) == (DELIVERED, 2)
    assert len(shipped) == 1, f"expected the event of the successful attempt only: {shipped}"


async def test_sync_handler_can_chain_events(make_outbox: Callable[..., Outbox]) -> None:
    handlers = LocalHandler()
    received: list[Event] = []

    @handlers.register(event_name="user.created", name="welcome")
    def welcome(event: Event) -> None:  # runs in a thread
        dispatch("email.requested", {"to": event.payload["email"]})

    @handlers.register(event_name="email.requested", name="mailer")
    async def mailer(event: Event) -> None:
        received.append(event)

    outbox = make_outbox(handlers=[handlers])
    await dispatch_one(outbox, "user.created", {"email": "a@example.com"})
    await outbox.drain()

    assert [event.payload for event in received] == [{"to": "a@example.com"}]


class ArchivingHandler(BaseEventHandler):
    """Takes batches; chains ``archive.done`` for each event it took, rejects ``n == 0``."""

    def __init__(self) -> None:
        super().__init__(name="archiver", event_name="doc.*")

    async def handle_many(self, events: Sequence[Event]) -> None:
        failures: dict[object, BaseException] = {}
        for event in events:
            if event.payload["n"] == 0 and event.attempt == 1:
                failures[event.id] = RuntimeError("locked")
            else:
                dispatch("archive.done", {"n": event.payload["n"]})
        if failures:
            raise PartialDeliveryError(failures)


async def test_chained_events_of_a_partly_failed_batch_are_kept(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    archived: list[int] = []

    @handlers.register(event_name="archive.done", name="archive-log")
    async def log(event: Event) -> None:
        archived.append(event.payload["n"])

    outbox = make_outbox(handlers=[ArchivingHandler(), handlers], retry=IMMEDIATE_RETRY)
    async with outbox.unit_of_work():
        for n in range(3):
            dispatch("doc.saved", {"n": n})
    await outbox.drain()

    assert sorted(archived) == [0, 1, 2], (
        "events chained for the delivered part of a batch were lost with the failed event"
    )
