"""A handler's own writes commit together with its delivery (DESIGN rule 9): through
``delivery_session()`` they, the events it dispatches and the "delivered" mark share one
transaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

import pytest
import sqlalchemy as sa
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

from outbox_events import (
    Event,
    NoDeliveryError,
    Outbox,
    RetryPolicy,
    delivery_session,
    dispatch,
)
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.handlers.local import LocalHandler
from outbox_events.store.tables import DELIVERED, PENDING
from tests.helpers import outbox_row

IMMEDIATE_RETRY = RetryPolicy(initial_delay=0, max_delay=0)

payments = sa.Table(
    "payments",
    sa.MetaData(),
    sa.Column("order_id", sa.Integer, primary_key=True),  # a second insert would fail
    sa.Column("amount", sa.Integer, nullable=False),
)


async def create_payments(outbox: Outbox) -> None:
    async with outbox.engine.begin() as connection:
        await connection.run_sync(payments.metadata.create_all)


async def recorded_payments(outbox: Outbox) -> list[tuple[int, int]]:
    async with outbox.engine.connect() as connection:
        result = await connection.execute(sa.select(payments).order_by(payments.c.order_id))
        return [(row.order_id, row.amount) for row in result]


async def pay(outbox: Outbox, order_id: int) -> uuid.UUID:
    async with outbox.unit_of_work():
        return dispatch("order.paid", {"order": order_id, "amount": 10})


async def test_the_handlers_writes_commit_with_the_delivered_mark(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event, session: AsyncSession = Depends(delivery_session)):
        await session.execute(
            sa.insert(payments).values(order_id=event.payload["order"], amount=10)
        )

    outbox = make_outbox(handlers=[handlers])
    await create_payments(outbox)
    event_id = await pay(outbox, 7)

    result = await outbox.drain()

    assert result.delivered == 1
    assert await recorded_payments(outbox) == [(7, 10)]
    assert (await outbox_row(outbox, event_id=event_id))["state"] == DELIVERED


async def test_a_failing_handler_leaves_no_writes_and_is_retried(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    seen: list[int] = []

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event, session: AsyncSession = Depends(delivery_session)):
        await session.execute(sa.insert(payments).values(order_id=7, amount=event.attempt))
        seen.append(event.attempt)
        if event.attempt == 1:
            raise RuntimeError("fraud check unavailable")

    outbox = make_outbox(handlers=[handlers], retry=IMMEDIATE_RETRY)
    await create_payments(outbox)
    event_id = await pay(outbox, 7)

    first = await outbox.relay.run_batch()
    after_failure = await recorded_payments(outbox)
    await outbox.drain()

    assert first.retried == 1
    assert after_failure == [], "the failed attempt's write was kept"
    assert seen == [1, 2]
    assert await recorded_payments(outbox) == [(7, 2)], "exactly the successful attempt's write"
    row = await outbox_row(outbox, event_id=event_id)
    assert (row["state"], row["attempts"]) == (DELIVERED, 2)


async def test_events_the_handler_dispatches_commit_in_the_same_transaction(
    make_outbox: Callable[..., Outbox],
) -> None:
    receipts: list[Event] = []
    handlers = LocalHandler()

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event, session: AsyncSession = Depends(delivery_session)):
        await session.execute(sa.insert(payments).values(order_id=7, amount=10))
        dispatch("payment.recorded", {"order": 7})

    @handlers.register(event_name="payment.recorded", name="receipts")
    async def send_receipt(event: Event) -> None:
        receipts.append(event)

    outbox = make_outbox(handlers=[handlers])
    await create_payments(outbox)
    await pay(outbox, 7)

    result = await outbox.drain()

    assert result.delivered == 2
    assert [(event.name, event.payload) for event in receipts] == [
        ("payment.recorded", {"order": 7})
    ]


async def test_a_lost_lease_rolls_the_handlers_writes_back(
    make_outbox: Callable[..., Outbox],
) -> None:
    other_relays_token = uuid.uuid4()
    handlers = LocalHandler()

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event) -> None:
        # While the handler works, this relay's lease runs out and another relay claims the
        # event (before the handler opens its transaction: on SQLite that transaction holds
        # the only write lock).
        table = outbox.store.table
        async with outbox.engine.begin() as connection:
            await connection.execute(
                sa.update(table)
                .where(table.c.event_id == event.id)
                .values(lease_token=other_relays_token)
            )
        session = await delivery_session()
        await session.execute(sa.insert(payments).values(order_id=7, amount=10))

    outbox = make_outbox(handlers=[handlers])
    await create_payments(outbox)
    event_id = await pay(outbox, 7)

    result = await outbox.relay.run_batch()

    assert result.delivered == 0
    assert await recorded_payments(outbox) == [], "a write was committed without its event"
    row = await outbox_row(outbox, event_id=event_id)
    assert (row["state"], row["lease_token"]) == (PENDING, other_relays_token), (
        "the row the other relay holds must be left to it"
    )


class _Ledger(BaseEventHandler):
    """A custom destination that asks for the session inside ``handle``."""

    async def handle(self, event: Event) -> None:
        session = await delivery_session()
        await session.execute(sa.insert(payments).values(order_id=event.payload["order"], amount=1))


async def test_a_custom_handler_can_await_the_session(make_outbox: Callable[..., Outbox]) -> None:
    outbox = make_outbox(handlers=[_Ledger(name="ledger")])
    await create_payments(outbox)
    await pay(outbox, 3)
    await pay(outbox, 4)

    assert (await outbox.drain()).delivered == 2
    assert await recorded_payments(outbox) == [(3, 1), (4, 1)]


class _BatchLedger(BaseEventHandler):
    async def handle_many(self, events: Sequence[Event]) -> None:
        await delivery_session()


async def test_the_session_is_refused_outside_one_events_delivery(
    make_outbox: Callable[..., Outbox],
) -> None:
    with pytest.raises(NoDeliveryError, match="outside a delivery"):
        await delivery_session()

    outbox = make_outbox(handlers=[_BatchLedger(name="batch")], retry=RetryPolicy(max_attempts=1))
    await pay(outbox, 1)
    result = await outbox.drain()

    assert result.dead_lettered == 1, "handle_many cannot share one event's transaction"


async def test_handlers_that_read_then_write_do_not_fail_each_other(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event, session: AsyncSession = Depends(delivery_session)):
        seen = (await session.execute(sa.select(sa.func.count()).select_from(payments))).scalar()
        await asyncio.sleep(0.02)  # an API call, say: the other handlers run meanwhile
        await session.execute(
            sa.insert(payments).values(order_id=event.payload["order"], amount=seen)
        )

    outbox = make_outbox(handlers=[handlers], retry=RetryPolicy(max_attempts=1))
    await create_payments(outbox)
    async with outbox.unit_of_work():
        for order in range(5):
            dispatch("order.paid", {"order": order, "amount": 10})

    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered) == (5, 0)
    assert [order for order, _ in await recorded_payments(outbox)] == [0, 1, 2, 3, 4]


async def test_closing_the_session_in_the_handler_keeps_its_writes(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()

    class Payment:
        pass

    from sqlalchemy.orm import registry

    registry().map_imperatively(Payment, payments)

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event) -> None:
        async with await delivery_session() as session:  # the usual idiom
            payment = Payment()
            payment.order_id, payment.amount = event.payload["order"], 10  # type: ignore[attr-defined]
            session.add(payment)

    outbox = make_outbox(handlers=[handlers])
    await create_payments(outbox)
    event_id = await pay(outbox, 9)

    assert (await outbox.drain()).delivered == 1
    assert await recorded_payments(outbox) == [(9, 10)]
    assert (await outbox_row(outbox, event_id=event_id))["state"] == DELIVERED


async def test_rolling_back_the_session_fails_the_delivery(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event, session: AsyncSession = Depends(delivery_session)):
        await session.execute(sa.insert(payments).values(order_id=7, amount=10))
        await session.rollback()

    outbox = make_outbox(handlers=[handlers], retry=IMMEDIATE_RETRY)
    await create_payments(outbox)
    event_id = await pay(outbox, 7)

    result = await outbox.relay.run_batch()

    assert result.retried == 1
    row = await outbox_row(outbox, event_id=event_id)
    assert row["state"] == PENDING and "rolled back" in row["last_error"]
    assert await recorded_payments(outbox) == []


async def test_the_session_is_refused_once_the_delivery_is_over(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    later: list[asyncio.Task[AsyncSession]] = []

    @handlers.register(event_name="order.paid", name="ledger")
    async def record_payment(event: Event) -> None:
        async def too_late() -> AsyncSession:
            await asyncio.sleep(0.05)
            return await delivery_session()

        later.append(asyncio.ensure_future(too_late()))

    outbox = make_outbox(handlers=[handlers])
    await pay(outbox, 7)
    assert (await outbox.drain()).delivered == 1

    with pytest.raises(NoDeliveryError):
        await later[0]
