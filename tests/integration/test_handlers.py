"""Destinations: local functions, custom handlers, Echo/Null, and rows that cannot be decoded.

Every test runs on SQLite and on PostgreSQL (``make_outbox``) and delivers through the real relay
(``outbox.drain()``).
"""

from __future__ import annotations

import asyncio
import enum
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import Depends

from outbox_events import (
    ConfigurationError,
    Event,
    Outbox,
    PartialDeliveryError,
    PermanentDeliveryError,
    dispatch,
)
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.handlers.echo import EchoHandler
from outbox_events.handlers.local import LocalHandler
from outbox_events.handlers.null import NullHandler
from outbox_events.relay.delivery import MAX_ERROR_LENGTH
from outbox_events.store.tables import DEAD, DELIVERED, PENDING
from tests.helpers import FakeClock, outbox_rows

RENDEZVOUS_TIMEOUT = 10.0  # seconds; only reached when deliveries are not concurrent
RELAY_TIMEOUT = 10.0  # seconds to wait for the background relay before failing the test

request_id: ContextVar[str] = ContextVar("request_id", default="unset")


class Topic(str, enum.Enum):
    ORDER_PAID = "order.paid"


class Kind(enum.Enum):
    SHIPPED = 1  # not a str: stored under the member's name, "SHIPPED"


async def dispatch_all(outbox: Outbox, *events: tuple[Any, Any]) -> list[uuid.UUID]:
    """Dispatch ``(name, payload)`` pairs in one unit of work; return their ids."""
    async with outbox.unit_of_work():
        return [dispatch(name, payload) for name, payload in events]


async def one_row(outbox: Outbox, event_id: uuid.UUID, destination: str) -> dict[str, Any]:
    [row] = await outbox_rows(outbox, event_id=event_id, destination=destination)
    return row


async def insert_raw_row(
    outbox: Outbox, *, destination: str, name: str, payload: str, headers: str | None = None
) -> uuid.UUID:
    """Put a row straight into the table, bypassing dispatch() and its validation."""
    event_id = uuid.uuid4()
    now = outbox.clock()
    async with outbox.engine.begin() as connection:
        await connection.execute(
            sa.insert(outbox.store.table).values(
                event_id=event_id,
                destination=destination,
                name=name,
                payload=payload,
                headers=headers,
                created_at=now,
                available_at=now,
            )
        )
    return event_id


def names_of(events: Iterable[Event]) -> list[str]:
    return sorted(event.name for event in events)


class HandleRecorder(BaseEventHandler):
    """A custom destination that takes one event at a time; ``failing(event)`` returns the
    exception to raise for an event, or None."""

    def __init__(
        self, *, failing: Callable[[Event], BaseException | None] = lambda _: None, **options: Any
    ) -> None:
        super().__init__(**options)
        self.failing = failing
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        error = self.failing(event)
        if error is not None:
            raise error


class BatchRecorder(BaseEventHandler):
    """A custom destination that takes whole batches; ``failing(events)`` returns the exception
    to raise for a batch, or None."""

    def __init__(
        self,
        *,
        failing: Callable[[Sequence[Event]], BaseException | None] = lambda _: None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.failing = failing
        self.batches: list[list[Event]] = []

    async def handle_many(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))
        error = self.failing(events)
        if error is not None:
            raise error


# -- LocalHandler ----------------------------------------------------------------------------


async def test_local_functions_receive_the_events_their_fnmatch_pattern_matches(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    received: dict[str, list[Event]] = {"orders": [], "everything": [], "juice": []}

    @handlers.register(event_name="order.*")
    async def orders(event: Event) -> None:
        received["orders"].append(event)

    @handlers.register
    async def everything(event: Event) -> None:
        received["everything"].append(event)

    @handlers.register(event_name="*juice")
    async def juice(event: Event) -> None:
        received["juice"].append(event)

    outbox = make_outbox(handlers=[handlers])
    await dispatch_all(outbox, ("order.placed", {}), ("orange_juice", {}), ("juice_is_spoiled", {}))
    await outbox.drain()

    assert names_of(received["orders"]) == ["order.placed"]
    assert names_of(received["juice"]) == ["orange_juice"], "'*juice' must match a whole name"
    assert names_of(received["everything"]) == [
        "juice_is_spoiled",
        "orange_juice",
        "order.placed",
    ], "a bare @register takes every event"


async def test_function_registered_under_two_patterns_is_one_destination_called_once(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    received: list[Event] = []

    @handlers.register(event_name="order.*")
    @handlers.register(event_name="*.paid")
    async def audit(event: Event) -> None:
        received.append(event)

    outbox = make_outbox(handlers=[handlers])
    [paid_id, *_] = await dispatch_all(
        outbox, ("order.paid", {}), ("order.placed", {}), ("invoice.paid", {}), ("user.new", {})
    )
    await outbox.drain()

    assert list(outbox.destinations) == [f"{audit.__module__}.{audit.__qualname__}"]
    assert names_of(received) == ["invoice.paid", "order.paid", "order.placed"], (
        "an event matching both patterns must reach the function once"
    )
    assert len(await outbox_rows(outbox, event_id=paid_id)) == 1


async def test_async_functions_are_awaited_on_the_event_loop_thread(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    finished: list[int] = []

    @handlers.register
    async def slow(event: Event) -> None:
        await asyncio.sleep(0)
        finished.append(threading.get_ident())

    outbox = make_outbox(handlers=[handlers])
    await dispatch_all(outbox, ("report.ready", {}))
    await outbox.drain()

    assert finished == [threading.get_ident()], "async handler not awaited to its end on the loop"


async def test_sync_functions_run_in_a_thread_with_the_callers_context(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    seen: list[tuple[int, str]] = []

    @handlers.register
    def blocking(event: Event) -> None:
        seen.append((threading.get_ident(), request_id.get()))

    outbox = make_outbox(handlers=[handlers])
    await dispatch_all(outbox, ("report.ready", {}))
    token = request_id.set("req-42")
    try:
        await outbox.drain()
    finally:
        request_id.reset(token)

    [(thread, context_value)] = seen
    assert thread != threading.get_ident(), "a sync handler blocked the event loop thread"
    assert context_value == "req-42", "the context was not copied into the handler's thread"


async def test_enum_members_register_and_dispatch_as_the_same_event(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    received: list[Event] = []

    @handlers.register(event_name=Topic.ORDER_PAID)
    @handlers.register(event_name=Kind.SHIPPED)
    async def on_order(event: Event) -> None:
        received.append(event)

    outbox = make_outbox(handlers=[handlers])
    await dispatch_all(
        outbox,
        (Topic.ORDER_PAID, {"n": 1}),
        ("order.paid", {"n": 2}),
        (Kind.SHIPPED, {"n": 3}),
        ("order.placed", {"n": 4}),
    )
    await outbox.drain()

    assert sorted(event.payload["n"] for event in received) == [1, 2, 3]
    assert {event.name for event in received} == {"order.paid", "SHIPPED"}


async def test_depends_is_resolved_when_the_relay_delivers(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    received: list[tuple[str, int]] = []

    def tenant_of(event: Event) -> str:
        return str(event.payload["tenant"])

    @handlers.register
    async def handler(event: Event, tenant: str = Depends(tenant_of)) -> None:
        received.append((tenant, event.attempt))

    outbox = make_outbox(handlers=[handlers])
    await dispatch_all(outbox, ("user.created", {"tenant": "acme"}))
    result = await outbox.drain()

    assert result.delivered == 1 and received == [("acme", 1)]


# -- destination names -----------------------------------------------------------------------


async def test_each_function_is_a_destination_named_by_module_and_qualified_name(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()

    @handlers.register(event_name="order.*")
    async def first(event: Event) -> None: ...

    @handlers.register(event_name="order.*", name="billing.v1")
    def second(event: Event) -> None: ...

    outbox = make_outbox(handlers=[handlers])
    [event_id] = await dispatch_all(outbox, ("order.paid", {}))
    await outbox.drain()

    prefix = f"{__name__}.test_each_function_is_a_destination_named_by_module_and_qualified_name"
    expected = {f"{prefix}.<locals>.first", "billing.v1"}
    assert set(outbox.destinations) == expected
    stored = await outbox_rows(outbox, event_id=event_id)
    assert {row["destination"]: row["state"] for row in stored} == dict.fromkeys(
        expected, DELIVERED
    )


def _make_handler(received: list[str], label: str) -> Callable[[Event], Any]:
    async def handler(event: Event) -> None:
        received.append(label)

    return handler


async def test_functions_sharing_a_qualified_name_need_distinct_names(
    make_outbox: Callable[..., Outbox],
) -> None:
    received: list[str] = []
    clashing = LocalHandler()
    clashing.register(event_name="job.*")(_make_handler(received, "a"))
    with pytest.raises(ConfigurationError, match="name="):
        clashing.register(event_name="job.*")(_make_handler(received, "b"))

    handlers = LocalHandler()
    handlers.register(event_name="job.*", name="job-a")(_make_handler(received, "a"))
    handlers.register(event_name="job.*", name="job-b")(_make_handler(received, "b"))
    outbox = make_outbox(handlers=[handlers])
    await dispatch_all(outbox, ("job.done", {}))
    await outbox.drain()

    assert sorted(received) == ["a", "b"], "each named function must receive the event"


# -- BaseEventHandler ------------------------------------------------------------------------


async def test_handle_only_subclass_gets_events_concurrently(
    make_outbox: Callable[..., Outbox],
) -> None:
    count = 3

    class Rendezvous(BaseEventHandler):
        """Each call waits until all ``count`` calls are in progress at once."""

        def __init__(self) -> None:
            super().__init__()
            self.arrived = 0
            self.all_arrived = asyncio.Event()

        async def handle(self, event: Event) -> None:
            self.arrived += 1
            if self.arrived == count:
                self.all_arrived.set()
            await asyncio.wait_for(self.all_arrived.wait(), RENDEZVOUS_TIMEOUT)

    outbox = make_outbox(handlers=[Rendezvous()])
    await dispatch_all(outbox, *[("tick", {"n": n}) for n in range(count)])
    result = await outbox.drain()

    assert result.delivered == count, "events without a key were not handled concurrently"


async def test_sync_functions_of_one_batch_run_side_by_side(
    make_outbox: Callable[..., Outbox],
) -> None:
    count = 3
    barrier = threading.Barrier(count, timeout=RENDEZVOUS_TIMEOUT)
    handlers = LocalHandler()

    @handlers.register(event_name="tick")
    def wait_for_the_others(event: Event) -> None:  # runs in a thread
        barrier.wait()  # BrokenBarrierError unless all `count` calls are in progress at once

    outbox = make_outbox(handlers=[handlers])
    await dispatch_all(outbox, *[("tick", {"n": n}) for n in range(count)])
    result = await outbox.drain()

    assert result.delivered == count, "sync handler functions were not run side by side"


async def test_handle_only_subclass_retries_just_the_event_that_failed(
    make_outbox: Callable[..., Outbox],
) -> None:
    clock = FakeClock()

    def first_attempt_of_n1_fails(event: Event) -> BaseException | None:
        return RuntimeError("flaky") if event.payload["n"] == 1 and event.attempt == 1 else None

    recorder = HandleRecorder(name="per-event", failing=first_attempt_of_n1_fails)
    outbox = make_outbox(handlers=[recorder], clock=clock)
    ids = await dispatch_all(outbox, *[("tick", {"n": n}) for n in range(3)])

    first = await outbox.drain()
    clock.advance(3600)
    second = await outbox.drain()

    assert (first.delivered, first.retried) == (2, 1)
    assert (second.delivered, second.attempted) == (1, 1)
    calls = [(event.payload["n"], event.attempt) for event in recorder.events]
    assert sorted(calls) == [(0, 1), (1, 1), (1, 2), (2, 1)], "only the failed event is retried"
    for event_id in ids:
        assert (await one_row(outbox, event_id, "per-event"))["state"] == DELIVERED


async def test_handle_many_only_subclass_gets_each_batch_in_one_call(
    make_outbox: Callable[..., Outbox],
) -> None:
    recorder = BatchRecorder(name="batched")
    outbox = make_outbox(handlers=[recorder])
    ids = await dispatch_all(outbox, *[("tick", {"n": n}) for n in range(5)])
    result = await outbox.drain()

    assert result.delivered == 5
    assert len(recorder.batches) == 1, f"expected one call, got {len(recorder.batches)}"
    assert sorted(event.id for event in recorder.batches[0]) == sorted(ids)


async def test_partial_delivery_error_retries_only_the_events_it_names(
    make_outbox: Callable[..., Outbox],
) -> None:
    clock = FakeClock()

    def second_event_fails_once(events: Sequence[Event]) -> BaseException | None:
        failed = [e for e in events if e.payload["n"] == 1 and e.attempt == 1]
        return (
            PartialDeliveryError({e.id: RuntimeError("quota") for e in failed}) if failed else None
        )

    recorder = BatchRecorder(name="batched", failing=second_event_fails_once)
    outbox = make_outbox(handlers=[recorder], clock=clock)
    ids = await dispatch_all(outbox, *[("tick", {"n": n}) for n in range(3)])

    first = await outbox.drain()
    failed_row = await one_row(outbox, ids[1], "batched")
    clock.advance(3600)
    await outbox.drain()

    assert (first.delivered, first.retried) == (2, 1)
    assert failed_row["state"] == PENDING and failed_row["attempts"] == 1
    assert failed_row["last_error"] == "RuntimeError: quota"
    assert [[e.id for e in batch] for batch in recorder.batches[1:]] == [[ids[1]]], (
        "the retry must carry only the event the PartialDeliveryError named"
    )
    for event_id in ids:
        assert (await one_row(outbox, event_id, "batched"))["state"] == DELIVERED


@pytest.mark.parametrize("shape", ["handle", "handle_many"])
async def test_permanent_delivery_error_dead_letters_at_once_with_the_reason(
    make_outbox: Callable[..., Outbox], shape: str
) -> None:
    reason = "message too large"
    handler: BaseEventHandler
    if shape == "handle":
        handler = HandleRecorder(name="dest", failing=lambda _: PermanentDeliveryError(reason))
    else:
        handler = BatchRecorder(
            name="dest",
            failing=lambda events: PartialDeliveryError(
                {events[0].id: PermanentDeliveryError(reason)}
            ),
        )
    outbox = make_outbox(handlers=[handler])
    [event_id] = await dispatch_all(outbox, ("upload.done", {}))
    result = await outbox.drain()

    row = await one_row(outbox, event_id, "dest")
    assert result.dead_lettered == 1 and result.retried == 0
    assert (row["state"], row["attempts"]) == (DEAD, 1), "a permanent error must not be retried"
    assert row["last_error"] == f"PermanentDeliveryError: {reason}"


async def test_subclass_that_overrides_neither_method_is_a_configuration_error(
    make_outbox: Callable[..., Outbox],
) -> None:
    class DoesNothing(BaseEventHandler):
        pass

    outbox = make_outbox(handlers=[DoesNothing()])
    with pytest.raises(ConfigurationError, match=r"DoesNothing must override handle"):
        async with outbox.unit_of_work():
            dispatch("tick", {})


async def test_name_and_event_name_options_route_and_name_each_instance(
    make_outbox: Callable[..., Outbox],
) -> None:
    audit = HandleRecorder(name="audit", event_name="order.*")
    billing = HandleRecorder(name="billing", event_name=["invoice.*", Topic.ORDER_PAID])
    shipping = HandleRecorder(name="shipping", event_name=Kind.SHIPPED)
    outbox = make_outbox(handlers=[audit, billing, shipping])
    ids = await dispatch_all(
        outbox,
        ("order.placed", {}),
        ("order.paid", {}),
        ("invoice.sent", {}),
        (Kind.SHIPPED, {}),
        ("user.created", {}),
    )
    await outbox.drain()

    assert names_of(audit.events) == ["order.paid", "order.placed"]
    assert names_of(billing.events) == ["invoice.sent", "order.paid"]
    assert names_of(shipping.events) == ["SHIPPED"]
    assert {row["destination"] for row in await outbox_rows(outbox, event_id=ids[1])} == {
        "audit",
        "billing",
    }


async def test_two_unnamed_instances_of_one_class_need_distinct_names(
    make_outbox: Callable[..., Outbox],
) -> None:
    outbox = make_outbox(handlers=[HandleRecorder(), HandleRecorder()])
    with pytest.raises(ConfigurationError, match="name="):
        _ = outbox.destinations


async def test_subclass_overriding_handle_of_a_batched_handler_gets_each_event(
    make_outbox: Callable[..., Outbox],
) -> None:
    class Counting(NullHandler):
        def __init__(self) -> None:
            super().__init__(name="counting")
            self.events: list[Event] = []

        async def handle(self, event: Event) -> None:
            self.events.append(event)

    counting = Counting()
    outbox = make_outbox(handlers=[counting])
    await dispatch_all(outbox, ("a", {}), ("b", {}))
    await outbox.drain()

    assert names_of(counting.events) == ["a", "b"], "the subclass's own handle() was bypassed"


# -- EchoHandler, NullHandler ----------------------------------------------------------------


async def test_echo_prints_name_and_payload_and_null_accepts_everything(
    make_outbox: Callable[..., Outbox], capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = make_outbox(handlers=[EchoHandler(), NullHandler()])
    ids = await dispatch_all(outbox, ("order.placed", {"id": 1}))
    result = await outbox.drain()

    assert result.delivered == 2
    assert capsys.readouterr().out == "('order.placed', {'id': 1})\n"
    assert {row["state"] for row in await outbox_rows(outbox, event_id=ids[0])} == {DELIVERED}


# -- errors and undecodable rows -------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("downstream said no", "RuntimeError: downstream said no"),
        ("expected one of:", "RuntimeError: expected one of:"),
        ("", "RuntimeError"),
    ],
)
async def test_handler_exception_is_recorded_as_type_and_message(
    make_outbox: Callable[..., Outbox], message: str, expected: str
) -> None:
    handlers = LocalHandler()

    @handlers.register(name="failing")
    def failing(event: Event) -> None:
        raise RuntimeError(message)

    outbox = make_outbox(handlers=[handlers])
    [event_id] = await dispatch_all(outbox, ("tick", {}))
    await outbox.drain()

    assert (await one_row(outbox, event_id, "failing"))["last_error"] == expected


async def test_long_error_messages_are_truncated(make_outbox: Callable[..., Outbox]) -> None:
    handlers = LocalHandler()

    @handlers.register(name="failing")
    async def failing(event: Event) -> None:
        raise ValueError("x" * (MAX_ERROR_LENGTH * 5))

    outbox = make_outbox(handlers=[handlers])
    [event_id] = await dispatch_all(outbox, ("tick", {}))
    await outbox.drain()

    last_error = (await one_row(outbox, event_id, "failing"))["last_error"]
    assert last_error.startswith("ValueError: xxx")
    assert len(last_error) == MAX_ERROR_LENGTH, f"last_error is {len(last_error)} characters"


UNDECODABLE = {
    "invalid JSON payload": {"payload": "{not json"},
    "empty payload": {"payload": ""},
    "payload nested too deep": {"payload": "[" * 100_000 + "]" * 100_000},
    "invalid JSON headers": {"payload": "{}", "headers": "{broken"},
    "headers not an object": {"payload": "{}", "headers": "[1, 2]"},
}


@pytest.mark.parametrize("garbage", UNDECODABLE.values(), ids=UNDECODABLE.keys())
async def test_undecodable_row_is_dead_lettered_and_the_batch_still_delivered(
    make_outbox: Callable[..., Outbox], garbage: dict[str, str]
) -> None:
    handlers = LocalHandler()
    received: list[Event] = []

    @handlers.register(name="local")
    async def local(event: Event) -> None:
        received.append(event)

    batched = BatchRecorder(name="batched")
    outbox = make_outbox(handlers=[handlers, batched])
    bad_ids = [
        await insert_raw_row(outbox, destination=name, name="tick", **garbage)
        for name in ("local", "batched")
    ]
    good_ids = await dispatch_all(outbox, ("tick", {"n": 1}), ("tick", {"n": 2}))
    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered, result.retried) == (4, 2, 0)
    assert sorted(event.id for event in received) == sorted(good_ids)
    assert [sorted(event.id for event in batch) for batch in batched.batches] == [sorted(good_ids)]
    for event_id, destination in zip(bad_ids, ("local", "batched"), strict=True):
        row = await one_row(outbox, event_id, destination)
        assert (row["state"], row["attempts"]) == (DEAD, 1)
        assert "decode" in row["last_error"], f"reason does not say why: {row['last_error']!r}"


async def test_background_relay_keeps_running_after_an_undecodable_row(
    make_outbox: Callable[..., Outbox],
) -> None:
    handlers = LocalHandler()
    arrived: asyncio.Queue[Event] = asyncio.Queue()

    @handlers.register(name="local")
    async def local(event: Event) -> None:
        arrived.put_nowait(event)

    outbox = make_outbox(handlers=[handlers])
    bad_id = await insert_raw_row(outbox, destination="local", name="tick", payload="{not json")
    outbox.relay.start()
    for n in range(2):  # the second event is claimed only after the first batch was settled
        [event_id] = await dispatch_all(outbox, ("tick", {"n": n}))
        event = await asyncio.wait_for(arrived.get(), RELAY_TIMEOUT)
        assert event.id == event_id

    assert outbox.relay.running, "the relay stopped after an undecodable row"
    assert (await one_row(outbox, bad_id, "local"))["state"] == DEAD
