"""Delivery rule 7 with several relays at once: events of one key reach a destination in
dispatch order, never two at a time, and a failing event holds back only the later events of
its own key until it succeeds or is dead-lettered.

Three relays (``Outbox`` objects over the same database, two batches in flight each) share a
PostgreSQL table; SQLite, with its single writer, gets one relay with two batches in flight.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from outbox_events import Event, Outbox, PermanentDeliveryError, RetryPolicy, dispatch
from outbox_events.handlers.local import LocalHandler
from outbox_events.store.tables import DEAD, DELIVERED

WAIT = 60.0  # seconds any single outcome may take before the test gives up
KEYS = 8
PER_KEY = 25
UNKEYED = 40


class Destination:
    """A local handler that records what it gets, in order, and fails on demand."""

    def __init__(self) -> None:
        self.received: list[tuple[str | None, int]] = []  # (key, seq) in delivery order
        self.attempts: collections.Counter[int] = collections.Counter()
        self.failing: set[int] = set()  # seqs that fail (and are retried) while listed here
        self.rejected: set[int] = set()  # seqs that fail permanently (dead-lettered at once)
        self.in_flight: set[str] = set()
        self.overlaps: list[tuple[str, int]] = []  # a key delivered while it was in flight

    async def handle(self, event: Event) -> None:
        key, seq = event.key, event.payload["seq"]
        if key is not None:
            if key in self.in_flight:
                self.overlaps.append((key, seq))
            self.in_flight.add(key)
        try:
            await asyncio.sleep(random.uniform(0, 0.003))  # shuffles concurrent deliveries
            self.attempts[seq] += 1
            if seq in self.rejected:
                raise PermanentDeliveryError(f"event {seq} rejected")
            if seq in self.failing:
                raise RuntimeError(f"destination refuses event {seq} for now")
            self.received.append((key, seq))
        finally:
            if key is not None:
                self.in_flight.discard(key)

    def seqs(self, key: str | None) -> list[int]:
        return [seq for k, seq in self.received if k == key]


async def wait_until(condition: Callable[[], bool], what: str, details: Callable[[], Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        assert loop.time() < deadline, f"gave up waiting for {what}: {details()}"
        await asyncio.sleep(0.02)


async def test_key_order_holds_across_relays_and_a_failing_event_holds_back_only_its_key(
    make_outbox: Callable[..., Outbox], database_url: str
) -> None:
    destination = Destination()
    handlers = LocalHandler()
    handlers.register(event_name="*", name="ordered")(destination.handle)
    relay_count = 1 if database_url.startswith("sqlite") else 3
    outboxes = [
        make_outbox(
            handlers=[handlers],
            relay="external",
            batch_size=5,
            poll_interval=0.05,
            retry=RetryPolicy(initial_delay=0.05, max_delay=0.2, max_attempts=1000),
        )
        for _ in range(relay_count)
    ]
    for outbox in outboxes:
        outbox.relay.configure(concurrency=2)

    # Keys interleaved in dispatch order, unkeyed events in between.
    plan: list[tuple[str | None, int]] = []
    for round_ in range(PER_KEY):
        for k in range(KEYS):
            plan.append((f"k{k}", len(plan)))
        if round_ % 5 == 0:
            plan.extend((None, len(plan) + i) for i in range(UNKEYED // 5))
    expected = {key: [seq for k, seq in plan if k == key] for key in {k for k, _ in plan}}
    held_back, dead_head = expected["k0"][0], expected["k1"][0]
    destination.failing.add(held_back)
    destination.rejected.add(dead_head)
    for first in range(0, len(plan), 20):
        async with outboxes[0].unit_of_work():
            for key, seq in plan[first : first + 20]:
                dispatch("ordering.test", {"seq": seq}, key=key)

    for outbox in outboxes:
        outbox.relay.start()
    try:
        others = [seq for key, seq in plan if key not in ("k0", "k1")] + expected["k1"][1:]
        await wait_until(
            lambda: (
                sorted(s for k, s in destination.received if k != "k0") == sorted(others)
                and destination.attempts[held_back] >= 3
            ),
            "every other key to flow while k0's first event fails",
            lambda: (len(destination.received), destination.attempts[held_back]),
        )
        assert destination.seqs("k0") == [], "k0's later events must wait for its first one"

        destination.failing.clear()  # the destination takes k0's first event now
        await wait_until(
            lambda: len(destination.received) == len(plan) - 1,
            "k0's events to follow once its first one succeeded",
            lambda: destination.seqs("k0"),
        )
    finally:
        await asyncio.gather(*(outbox.relay.stop() for outbox in outboxes))

    for key, seqs in expected.items():
        if key is None:
            assert sorted(destination.seqs(None)) == seqs
        elif key == "k1":
            assert destination.seqs(key) == seqs[1:], "k1 continues after its dead first event"
        else:
            assert destination.seqs(key) == seqs, f"{key} delivered out of dispatch order"
    assert destination.overlaps == [], "two events of one key were delivered at the same time"
    assert destination.attempts[held_back] >= 4
    assert destination.attempts[dead_head] == 1
    states = await _states(outboxes[0])
    assert collections.Counter(states.values()) == {DELIVERED: len(plan) - 1, DEAD: 1}


async def _states(outbox: Outbox) -> dict[int, str]:
    table = outbox.store.table
    async with outbox.engine.connect() as connection:
        rows = await connection.execute(sa.select(table.c.id, table.c.state))
        return {row_id: state for row_id, state in rows}


async def test_the_next_event_of_a_key_goes_at_once_not_after_the_poll_interval(
    make_outbox: Callable[..., Outbox],
) -> None:
    """Only one event per key is in flight, so each claim takes one event of a busy key;
    settling it must let the relay claim the next one straight away. With an hour-long poll
    interval, waiting for the poll would leave the key stuck."""
    destination = Destination()
    handlers = LocalHandler()
    handlers.register(event_name="*", name="ordered")(destination.handle)
    outbox = make_outbox(handlers=[handlers], relay="external", poll_interval=3600)
    async with outbox.unit_of_work():
        for seq in range(20):
            dispatch("ordering.test", {"seq": seq}, key="busy")

    outbox.relay.start()
    try:
        await wait_until(
            lambda: len(destination.received) == 20,
            "every event of the key",
            lambda: destination.seqs("busy"),
        )
    finally:
        await outbox.relay.stop()

    assert destination.seqs("busy") == list(range(20))
