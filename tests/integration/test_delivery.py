"""Committed events reach each matching destination; failures retry, then dead-letter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from outbox_events import Event, Outbox, RetryPolicy, dispatch
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.handlers.local import LocalHandler
from outbox_events.store.tables import DEAD, DELIVERED
from tests.helpers import FakeClock, outbox_row


async def test_each_matching_destination_receives_a_committed_event_once(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    received: dict[str, list[Event]] = {"orders": [], "everything": [], "users": []}

    @handlers.register(event_name="order.*")
    async def orders(event: Event) -> None:
        received["orders"].append(event)

    @handlers.register
    def everything(event: Event) -> None:  # sync: runs in a thread
        received["everything"].append(event)

    @handlers.register(event_name="user.*")
    async def users(event: Event) -> None:
        received["users"].append(event)

    outbox = make_outbox(handlers=[handlers])
    async with outbox.unit_of_work():
        event_id = dispatch("order.placed", {"id": 7}, key="order-7", headers={"tenant": "a"})

    result = await outbox.drain()
    again = await outbox.drain()

    assert result.delivered == 2 and again.attempted == 0
    assert received["users"] == []
    for name in ("orders", "everything"):
        [event] = received[name]
        name_, payload = event
        assert (name_, payload) == ("order.placed", {"id": 7})
        assert event.id == event_id and event.key == "order-7"
        assert event.headers == {"tenant": "a"} and event.attempt == 1


async def test_failing_destination_backs_off_then_dead_letters_without_repeating_others(
    make_outbox: Callable[..., Outbox],
) -> None:
    clock = FakeClock()
    handlers = LocalHandler()
    calls = {"good": 0, "bad": 0}

    @handlers.register(event_name="job.done", name="good")
    async def good(event: Event) -> None:
        calls["good"] += 1

    @handlers.register(event_name="job.done", name="bad")
    async def bad(event: Event) -> None:
        calls["bad"] += 1
        raise RuntimeError(f"downstream refused attempt {event.attempt}")

    policy = RetryPolicy(max_attempts=4, initial_delay=10, max_delay=1000)
    outbox = make_outbox(handlers=[handlers], retry=policy, clock=clock)
    async with outbox.unit_of_work():
        event_id = dispatch("job.done", {"job": 1})

    delays = []
    await outbox.drain()
    for _ in range(policy.max_attempts - 1):
        row = await outbox_row(outbox, event_id=event_id, destination="bad")
        delays.append((row["available_at"] - clock.now).total_seconds())
        assert (await outbox.drain()).attempted == 0, "retried before its backoff elapsed"
        clock.advance(delays[-1])
        await outbox.drain()

    assert calls == {"good": 1, "bad": policy.max_attempts}
    assert delays == sorted(delays) and delays[0] < delays[-1], f"delays did not grow: {delays}"
    assert 5 <= delays[0] <= 10
    bad_row, good_row = (
        await outbox_row(outbox, event_id=event_id, destination="bad"),
        await outbox_row(outbox, event_id=event_id, destination="good"),
    )
    assert good_row["state"] == DELIVERED
    assert bad_row["state"] == DEAD
    assert bad_row["attempts"] == policy.max_attempts
    assert bad_row["last_error"] == "RuntimeError: downstream refused attempt 4"


async def test_a_new_outbox_over_the_same_database_delivers_what_was_pending(
    make_outbox: Callable[..., Outbox],
) -> None:
    first = make_outbox(handlers=[_Recorder()], relay="external")
    async with first.unit_of_work():
        ids = [dispatch("report.ready", {"n": n}) for n in range(3)]
    await first.close()

    recorder = _Recorder()
    restarted = make_outbox(handlers=[recorder])
    result = await restarted.drain()

    assert result.delivered == 3
    assert sorted(event.id for event in recorder.events) == sorted(ids)


class _Recorder(BaseEventHandler):
    def __init__(self) -> None:
        super().__init__(name="recorder")
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)


async def test_delivered_rows_are_deleted_unless_a_retention_is_set(
    make_outbox: Callable[..., Outbox],
) -> None:
    import sqlalchemy as sa

    outbox = make_outbox(handlers=[_Recorder()], retention=None)
    async with outbox.unit_of_work():
        dispatch("report.ready", {"n": 1})
        dispatch("report.ready", {"n": 2})

    assert (await outbox.drain()).delivered == 2
    async with outbox.engine.connect() as connection:
        remaining = (
            await connection.execute(sa.select(sa.func.count()).select_from(outbox.store.table))
        ).scalar_one()
    assert remaining == 0, "delivered rows should be deleted when no retention is set"


class _Gate(BaseEventHandler):
    """Holds every delivery until opened; counts the deliveries waiting at the gate."""

    def __init__(self) -> None:
        super().__init__(name="gate")
        self.waiting = 0
        self.opened = asyncio.Event()

    async def handle(self, event: Event) -> None:
        self.waiting += 1
        await self.opened.wait()


async def _leased(outbox: Outbox) -> int:
    import sqlalchemy as sa

    table = outbox.store.table
    async with outbox.engine.connect() as connection:
        result = await connection.execute(
            sa.select(sa.func.count()).where(table.c.lease_token.isnot(None))
        )
        return int(result.scalar_one())


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_the_relay_keeps_at_most_concurrency_batches_in_flight(
    make_outbox: Callable[..., Outbox], concurrency: int
) -> None:
    gate = _Gate()
    outbox = make_outbox(handlers=[gate], batch_size=2, concurrency=concurrency)
    async with outbox.unit_of_work():
        for n in range(20):
            dispatch("report.ready", {"n": n})

    draining = asyncio.ensure_future(outbox.drain())
    try:

        async def batches_arrived() -> None:
            while gate.waiting < 2 * concurrency:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(batches_arrived(), 30)
        await asyncio.sleep(0.2)  # room for a claim too many to show up
        in_flight = gate.waiting, await _leased(outbox)
    finally:
        gate.opened.set()
        result = await draining

    assert in_flight == (2 * concurrency, 2 * concurrency), "batches in flight != concurrency"
    assert result.delivered == 20


async def test_only_the_relays_own_connections_skip_the_wait_for_the_disk(
    make_outbox: Callable[..., Outbox], database_url: str
) -> None:
    import sqlalchemy as sa

    outbox = make_outbox()
    postgres = database_url.startswith("postgresql")
    setting = "SHOW synchronous_commit" if postgres else "PRAGMA synchronous"
    durable, relaxed = ("on", "off") if postgres else ("2", "1")  # SQLite: FULL, NORMAL

    async def value(engine: Any) -> str:
        async with engine.connect() as connection:
            return str((await connection.execute(sa.text(setting))).scalar_one())

    assert await value(outbox.engine) == durable, "the app's event writes must be durable"
    assert await value(outbox.store.relay_engine) == relaxed


async def test_a_configuration_error_found_when_claiming_reaches_drain(
    make_outbox: Callable[..., Outbox],
) -> None:
    from outbox_events import ConfigurationError

    first, second = LocalHandler(), LocalHandler()

    @first.register(event_name="order.*", name="receipts")
    async def send_receipt(event: Event) -> None:
        pass

    outbox = make_outbox(handlers=[first, second])
    async with outbox.unit_of_work():
        dispatch("order.placed", {"id": 1})

    @second.register(event_name="order.*", name="receipts")  # registered later, same name
    async def send_another_receipt(event: Event) -> None:
        pass

    with pytest.raises(ConfigurationError, match="receipts"):
        await asyncio.wait_for(outbox.drain(), 30)  # raised, not waited on forever
