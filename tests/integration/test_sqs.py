"""SQSForwardHandler against a real SQS server (moto in server mode) with real boto3 clients.

Tests that go through an Outbox run on SQLite and on PostgreSQL (``make_outbox``), dispatch,
``drain()``, then read the queue back. Each test uses queues of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from opentelemetry import trace

from outbox_events import (
    ConfigurationError,
    DeliveryError,
    Event,
    Outbox,
    PartialDeliveryError,
    PermanentDeliveryError,
    RetryPolicy,
    dispatch,
)
from outbox_events.handlers import aws
from outbox_events.handlers.aws import SQSForwardHandler
from outbox_events.store.tables import DEAD, DELIVERED, PENDING
from tests.helpers import FakeClock, sampled_span
from tests.servers.sqs import MotoServer, SQSServer, sqs_server  # noqa: F401

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "vendor=opaque"


def sqs_handler(server: SQSServer, queue_url: str, **options: Any) -> SQSForwardHandler:
    options.setdefault("name", "sqs")
    return SQSForwardHandler(queue_url, server.region_name, **server.client_kwargs(), **options)


async def dispatch_all(outbox: Outbox, *events: tuple[str, Any], **options: Any) -> list[uuid.UUID]:
    """Dispatch ``(name, payload)`` pairs in one unit of work; return their ids."""
    async with outbox.unit_of_work():
        return [dispatch(name, payload, **options) for name, payload in events]


async def states(outbox: Outbox, destination: str = "sqs") -> dict[uuid.UUID, dict[str, Any]]:
    """The destination's rows by event id."""
    table = outbox.store.table
    query = sa.select(table).where(table.c.destination == destination).order_by(table.c.id)
    async with outbox.engine.connect() as connection:
        return {row.event_id: dict(row._mapping) for row in await connection.execute(query)}


async def received(server: SQSServer, queue_url: str) -> list[dict[str, Any]]:
    """Every message of the queue (read and deleted in a worker thread)."""
    return await asyncio.to_thread(server.receive_all, queue_url)


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {
        name: value["StringValue"] for name, value in message.get("MessageAttributes", {}).items()
    }


def event_ids(messages: list[dict[str, Any]]) -> list[uuid.UUID]:
    return [uuid.UUID(attributes(m)["event_id"]) for m in messages]


def hand_made_event(**fields: Any) -> Event:
    fields.setdefault("name", "order.placed")
    fields.setdefault("payload", {"id": 1})
    fields.setdefault("id", uuid.uuid4())
    return Event(**fields)


@pytest.fixture
def standard_queue(sqs_server: SQSServer) -> str:  # noqa: F811
    return sqs_server.create_queue()


@pytest.fixture
def fifo_queue(sqs_server: SQSServer) -> str:  # noqa: F811
    return sqs_server.create_queue(fifo=True)


# -- bodies and attributes ---------------------------------------------------------------------


async def test_events_arrive_as_fastapi_events_bodies_with_id_name_key_and_headers(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    outbox = make_outbox(handlers=[sqs_handler(sqs_server, standard_queue)])
    [placed] = await dispatch_all(
        outbox,
        ("order.placed", {"id": 7, "total": "10.00"}),
        key="order-7",
        headers={"tenant": "acme", "request-id": "r-1"},
    )
    [anonymous] = await dispatch_all(outbox, ("user.created", ["ann"]))
    result = await outbox.drain()

    assert (result.delivered, result.retried, result.dead_lettered) == (2, 0, 0)
    by_id = {
        uuid.UUID(attributes(m)["event_id"]): m for m in await received(sqs_server, standard_queue)
    }
    assert set(by_id) == {placed, anonymous}
    assert json.loads(by_id[placed]["Body"]) == ["order.placed", {"id": 7, "total": "10.00"}]
    assert attributes(by_id[placed]) == {
        "event_id": str(placed),
        "event_name": "order.placed",
        "event_key": "order-7",
        "event_headers": '{"request-id":"r-1","tenant":"acme"}',
    }
    assert json.loads(by_id[anonymous]["Body"]) == ["user.created", ["ann"]]
    assert attributes(by_id[anonymous]) == {
        "event_id": str(anonymous),
        "event_name": "user.created",
    }, "an event without key or headers must carry only its id and name"
    assert {row["state"] for row in (await states(outbox)).values()} == {DELIVERED}


async def test_envelope_body_carries_id_name_payload_key_headers_and_creation_time(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    clock = FakeClock()
    handler = sqs_handler(sqs_server, standard_queue, body_format="envelope")
    outbox = make_outbox(handlers=[handler], clock=clock)
    [event_id] = await dispatch_all(
        outbox, ("order.paid", {"id": 3}), key="order-3", headers={"tenant": "acme"}
    )
    await outbox.drain()

    [message] = await received(sqs_server, standard_queue)
    assert json.loads(message["Body"]) == {
        "id": str(event_id),
        "name": "order.paid",
        "payload": {"id": 3},
        "key": "order-3",
        "headers": {"tenant": "acme"},
        "created_at": clock.now.isoformat(),
    }


async def test_custom_serializer_and_id_generator_are_used(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    generated: list[str] = []

    def entry_id(event: Event) -> str:
        generated.append(f"entry-{event.payload['n']}")
        return generated[-1]

    handler = sqs_handler(
        sqs_server,
        standard_queue,
        serializer=lambda event: f"{event.name}:{event.payload['n']}",
        id_generator=entry_id,
    )
    outbox = make_outbox(handlers=[handler])
    await dispatch_all(outbox, *[("tick", {"n": n}) for n in range(3)])
    result = await outbox.drain()

    assert result.delivered == 3
    assert sorted(m["Body"] for m in await received(sqs_server, standard_queue)) == [
        "tick:0",
        "tick:1",
        "tick:2",
    ]
    assert sorted(generated) == ["entry-0", "entry-1", "entry-2"]


async def test_trace_context_of_the_dispatching_code_travels_as_attributes(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    span = sampled_span()
    outbox = make_outbox(handlers=[sqs_handler(sqs_server, standard_queue)])
    async with outbox.unit_of_work():
        with trace.use_span(span):
            traced = dispatch("order.placed", {"id": 1})
        untraced = dispatch("order.placed", {"id": 2})
    await outbox.drain()

    by_id = {
        uuid.UUID(attributes(m)["event_id"]): attributes(m)
        for m in await received(sqs_server, standard_queue)
    }
    assert by_id[traced]["traceparent"] == TRACEPARENT
    assert by_id[traced]["tracestate"] == TRACESTATE
    assert "traceparent" not in by_id[untraced] and "tracestate" not in by_id[untraced]


@pytest.mark.parametrize("method", ["handle", "handle_many"])
async def test_handler_sends_trace_context_of_the_event(
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
    method: str,
) -> None:
    handler = sqs_handler(sqs_server, standard_queue)
    event = hand_made_event(
        key="k-1",
        headers={"a": "1"},
        trace_context={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
    )
    try:
        if method == "handle":
            await handler.handle(event)
        else:
            await handler.handle_many([event])
    finally:
        await handler.aclose()

    [message] = await received(sqs_server, standard_queue)
    assert attributes(message) == {
        "event_id": str(event.id),
        "event_name": "order.placed",
        "event_key": "k-1",
        "event_headers": '{"a":"1"}',
        "traceparent": TRACEPARENT,
        "tracestate": TRACESTATE,
    }


async def test_handle_sends_one_message_like_fastapi_events(
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    handler = SQSForwardHandler(
        standard_queue, sqs_server.region_name, None, None, 10, **sqs_server.client_kwargs()
    )
    try:
        await handler.handle(hand_made_event(payload={"id": 9}))
    finally:
        await handler.aclose()

    [message] = await received(sqs_server, standard_queue)
    assert json.loads(message["Body"]) == ["order.placed", {"id": 9}]


# -- FIFO queues -----------------------------------------------------------------------------


async def test_fifo_group_is_the_key_and_deduplication_id_the_event_id(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    fifo_queue: str,
) -> None:
    handler = sqs_handler(sqs_server, fifo_queue, default_message_group_id="no-key")
    outbox = make_outbox(handlers=[handler])
    [keyed] = await dispatch_all(outbox, ("order.placed", {"id": 1}), key="order-1")
    [unkeyed] = await dispatch_all(outbox, ("user.created", {}))
    [odd_key] = await dispatch_all(outbox, ("order.placed", {}), key="commande n° 2")
    await outbox.drain()

    by_id = {
        uuid.UUID(attributes(m)["event_id"]): m for m in await received(sqs_server, fifo_queue)
    }
    system = {event_id: m["Attributes"] for event_id, m in by_id.items()}
    assert system[keyed]["MessageGroupId"] == "order-1"
    assert system[unkeyed]["MessageGroupId"] == "no-key"
    assert system[odd_key]["MessageGroupId"].startswith("sha256-"), (
        "a key that is not a valid group id must map to a stable digest"
    )
    assert attributes(by_id[odd_key])["event_key"] == "commande n° 2"
    for event_id, attrs in system.items():
        assert attrs["MessageDeduplicationId"] == str(event_id)


async def test_fifo_events_without_key_or_default_group_are_each_their_own_group(
    sqs_server: SQSServer,  # noqa: F811
    fifo_queue: str,
) -> None:
    handler = sqs_handler(sqs_server, fifo_queue)
    events = [hand_made_event(), hand_made_event()]
    try:
        await handler.handle_many(events)
    finally:
        await handler.aclose()

    messages = await received(sqs_server, fifo_queue)
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {str(e.id) for e in events}


async def test_fifo_queue_takes_an_event_sent_twice_once(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    fifo_queue: str,
) -> None:
    handler = sqs_handler(sqs_server, fifo_queue)
    outbox = make_outbox(handlers=[handler])
    [event_id] = await dispatch_all(outbox, ("order.placed", {"id": 1}), key="order-1")
    await outbox.drain()
    # What a relay that died before recording the success would do: deliver it again.
    again = hand_made_event(id=event_id, payload={"id": 1}, key="order-1")
    await handler.handle_many([again])
    await handler.handle(again)

    assert event_ids(await received(sqs_server, fifo_queue)) == [event_id]


async def test_fifo_queue_keeps_each_keys_dispatch_order(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    fifo_queue: str,
) -> None:
    outbox = make_outbox(handlers=[sqs_handler(sqs_server, fifo_queue)])
    keys = ["cart-a", "cart-b", "cart-c"]
    async with outbox.unit_of_work():
        for n in range(5):
            for key in keys:  # interleaved: a0 b0 c0 a1 b1 c1 ...
                dispatch("cart.changed", {"key": key, "n": n}, key=key)
    result = await outbox.drain()

    assert result.delivered == 15
    by_group: dict[str, list[int]] = {}
    for message in await received(sqs_server, fifo_queue):
        body = json.loads(message["Body"])[1]
        assert message["Attributes"]["MessageGroupId"] == body["key"]
        by_group.setdefault(body["key"], []).append(body["n"])
    assert by_group == {key: [0, 1, 2, 3, 4] for key in keys}, "a group's order was broken"


async def test_handle_many_sends_events_of_one_key_in_order_and_holds_back_after_a_failure(
    sqs_server: SQSServer,  # noqa: F811
    fifo_queue: str,
) -> None:
    handler = sqs_handler(sqs_server, fifo_queue, max_message_size=1024)
    first, too_big, after = (
        hand_made_event(key="k", payload={"n": 0}),
        hand_made_event(key="k", payload={"n": 1, "blob": "x" * 2000}),
        hand_made_event(key="k", payload={"n": 2}),
    )
    other = hand_made_event(key="other", payload={"n": 0})
    try:
        with pytest.raises(PartialDeliveryError) as caught:
            await handler.handle_many([first, too_big, after, other])
    finally:
        await handler.aclose()

    failures = caught.value.failures
    assert set(failures) == {too_big.id, after.id}
    assert isinstance(failures[too_big.id], PermanentDeliveryError)
    assert not isinstance(failures[after.id], PermanentDeliveryError)
    assert "held back" in str(failures[after.id])
    assert sorted(event_ids(await received(sqs_server, fifo_queue))) == sorted([first.id, other.id])


# -- rejections, limits and failures ----------------------------------------------------------


class DelayingHandler(SQSForwardHandler):
    """Adds DelaySeconds: an out-of-range value makes SQS reject that entry of a batch."""

    def message_params(self, event: Event) -> dict[str, Any]:
        params = super().message_params(event)
        params["DelaySeconds"] = event.payload.get("delay", 0)
        return params


async def test_entry_rejected_in_a_batch_is_dead_lettered_and_the_others_sent_once(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    clock = FakeClock()
    handler = DelayingHandler(
        standard_queue, sqs_server.region_name, name="sqs", **sqs_server.client_kwargs()
    )
    outbox = make_outbox(handlers=[handler], clock=clock)
    ids = await dispatch_all(
        outbox, *[("tick", {"n": n, "delay": 901 if n == 2 else 0}) for n in range(5)]
    )
    first = await outbox.drain()
    clock.advance(3600)
    second = await outbox.drain()

    assert (first.delivered, first.dead_lettered, first.retried) == (4, 1, 0)
    assert second.attempted == 0, "nothing may be sent again"
    rows = await states(outbox)
    assert (rows[ids[2]]["state"], rows[ids[2]]["attempts"]) == (DEAD, 1)
    assert rows[ids[2]]["last_error"].startswith("PermanentDeliveryError: SQS rejected")
    assert "InvalidParameterValue" in rows[ids[2]]["last_error"]
    assert "DelaySeconds" in rows[ids[2]]["last_error"]
    sent = event_ids(await received(sqs_server, standard_queue))
    assert sorted(sent) == sorted(ids[:2] + ids[3:]), "each accepted event exactly once"


async def test_batch_the_queue_refuses_for_one_message_is_sent_again_one_by_one(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
) -> None:
    # The queue takes at most 1 KiB; this library's limit is higher, so SQS (moto rejects the
    # whole batch) is the one to refuse the big message.
    queue_url = sqs_server.create_queue(MaximumMessageSize="1024")
    outbox = make_outbox(handlers=[sqs_handler(sqs_server, queue_url)])
    ids = await dispatch_all(
        outbox, *[("tick", {"n": n, "blob": "x" * (2000 if n == 1 else 10)}) for n in range(4)]
    )
    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered) == (3, 1)
    row = (await states(outbox))[ids[1]]
    assert row["state"] == DEAD
    assert "InvalidParameterValue" in row["last_error"] and "1024" in row["last_error"]
    assert sorted(event_ids(await received(sqs_server, queue_url))) == sorted(
        [ids[0], ids[2], ids[3]]
    )


async def test_oversized_event_is_dead_lettered_naming_size_and_limit_and_others_delivered(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    limit = 2048
    outbox = make_outbox(handlers=[sqs_handler(sqs_server, standard_queue, max_message_size=limit)])
    # ~900 bytes each: two fit in one request of at most 2048 bytes, so batches are split
    # by size as well as by count.
    ids = await dispatch_all(
        outbox, *[("tick", {"n": n, "blob": "x" * (5000 if n == 3 else 800)}) for n in range(8)]
    )
    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered, result.retried) == (7, 1, 0)
    error = (await states(outbox))[ids[3]]["last_error"]
    assert error.startswith("PermanentDeliveryError:")
    assert re.search(r"is 5\d{3} bytes", error) and f"limit of {limit} bytes" in error, error
    assert sorted(event_ids(await received(sqs_server, standard_queue))) == sorted(
        ids[:3] + ids[4:]
    )


async def test_body_with_a_character_sqs_refuses_is_dead_lettered(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    handler = sqs_handler(
        sqs_server, standard_queue, serializer=lambda event: f"{event.payload['text']}"
    )
    outbox = make_outbox(handlers=[handler])
    ids = await dispatch_all(outbox, ("note", {"text": "bell \x07"}), ("note", {"text": "fine"}))
    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered) == (1, 1)
    assert "U+0007" in (await states(outbox))[ids[0]]["last_error"]
    assert [m["Body"] for m in await received(sqs_server, standard_queue)] == ["fine"]


async def test_missing_queue_dead_letters_with_the_reason(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
) -> None:
    queue_url = f"{sqs_server.endpoint_url}/123456789012/no-such-queue-{uuid.uuid4().hex[:8]}"
    outbox = make_outbox(handlers=[sqs_handler(sqs_server, queue_url)])
    ids = await dispatch_all(outbox, ("tick", {}), ("tock", {}))
    result = await outbox.drain()

    assert (result.dead_lettered, result.retried) == (2, 0)
    for event_id in ids:
        error = (await states(outbox))[event_id]["last_error"]
        assert "NonExistentQueue" in error or "QueueDoesNotExist" in error, error


async def test_outage_is_retried_with_backoff_and_delivered_exactly_once_afterwards(
    make_outbox: Callable[..., Outbox],
) -> None:
    clock = FakeClock()
    server = MotoServer()
    server.start()
    try:
        sqs = SQSServer(server.endpoint_url)
        queue_url = sqs.create_queue()
        handler = sqs_handler(
            sqs,
            queue_url,
            # no retries inside botocore, so that each drain makes one attempt
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10),
        )
        outbox = make_outbox(
            handlers=[handler], clock=clock, retry=RetryPolicy(initial_delay=10, jitter=0)
        )
        before = await dispatch_all(outbox, ("tick", {"n": 0}))
        assert (await outbox.drain()).delivered == 1
        assert event_ids(await received(sqs, queue_url)) == before

        server.stop()
        during = await dispatch_all(outbox, *[("tick", {"n": n}) for n in range(1, 6)])
        first = await outbox.drain()
        too_early = await outbox.drain()
        clock.advance(10)
        second = await outbox.drain()
        rows = await states(outbox)

        assert (first.retried, first.delivered) == (5, 0)
        assert too_early.attempted == 0, "a failed delivery must wait for its backoff"
        assert second.retried == 5
        for event_id in during:
            assert (rows[event_id]["state"], rows[event_id]["attempts"]) == (PENDING, 2)
            assert rows[event_id]["last_error"].startswith("DeliveryError: SQS"), rows[event_id]
        assert rows[before[0]]["state"] == DELIVERED

        server.start()  # the same port again
        clock.advance(20)  # the second retry waits twice as long
        third = await outbox.drain()

        assert (third.delivered, third.retried) == (5, 0)
        assert sorted(event_ids(await received(sqs, queue_url))) == sorted(during), (
            "each event must arrive exactly once, and the one sent before must not be resent"
        )
    finally:
        server.stop()


async def test_event_name_routes_only_matching_events_to_the_queue(
    make_outbox: Callable[..., Outbox],
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    outbox = make_outbox(handlers=[sqs_handler(sqs_server, standard_queue, event_name="order.*")])
    ids = await dispatch_all(
        outbox, ("order.placed", {}), ("user.created", {}), ("order.paid", {}), ("orders", {})
    )
    await outbox.drain()

    assert sorted(event_ids(await received(sqs_server, standard_queue))) == sorted([ids[0], ids[2]])
    assert set(await states(outbox)) == {ids[0], ids[2]}


# -- threads, client lifecycle, configuration ---------------------------------------------------


async def test_boto3_calls_run_in_bounded_worker_threads_and_aclose_closes_the_client(
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    handler = sqs_handler(sqs_server, standard_queue, max_batch_size=1, max_concurrency=2)
    lock = threading.Lock()
    threads: set[int] = set()
    in_flight = 0
    most = 0

    def before(**_: Any) -> None:
        nonlocal in_flight, most
        with lock:
            threads.add(threading.get_ident())
            in_flight += 1
            most = max(most, in_flight)

    def after(**_: Any) -> None:
        nonlocal in_flight
        with lock:
            in_flight -= 1

    client = await handler._get_client()
    client.meta.events.register("before-send.sqs.*", before)
    client.meta.events.register("needs-retry.sqs.*", after)
    await handler.handle_many([hand_made_event(payload={"n": n}) for n in range(8)])
    await handler.aclose()

    assert threading.get_ident() not in threads, "a boto3 call ran on the event loop thread"
    assert 1 <= most <= 2, f"{most} calls in flight with max_concurrency=2"
    assert len(await received(sqs_server, standard_queue)) == 8
    # a delivery after aclose() opens a new client
    await handler.handle(hand_made_event())
    await handler.aclose()
    assert len(await received(sqs_server, standard_queue)) == 1


def test_one_handler_serves_several_event_loops(
    sqs_server: SQSServer,  # noqa: F811
    standard_queue: str,
) -> None:
    # A handler built at import time outlives the event loops of, say, a test suite.
    handler = sqs_handler(sqs_server, standard_queue, max_batch_size=1, max_concurrency=1)

    async def send(first: int) -> None:
        await handler.handle_many([hand_made_event(payload={"n": first + n}) for n in range(3)])

    for first in (0, 3):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(send(first))
        finally:
            loop.close()
    closing = asyncio.new_event_loop()
    try:
        closing.run_until_complete(handler.aclose())
    finally:
        closing.close()

    assert len(sqs_server.receive_all(standard_queue)) == 6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"serializer": "json"}, "serializer must be callable"),
        ({"id_generator": 42}, "id_generator must be callable"),
        ({"max_batch_size": 11}, "max_batch_size"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"body_format": "xml"}, "body_format"),
        ({"max_message_size": 2 * 1024 * 1024}, "max_message_size"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"default_message_group_id": "no spaces"}, "default_message_group_id"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQSForwardHandler("https://sqs.example/1/q", "eu-central-1", **options)


def test_missing_boto3_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'outbox-events\[sqs\]'"):
        SQSForwardHandler("https://sqs.example/1/q", "eu-central-1")


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "says so"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "SendMessageBatch",
    )


RETRIED: dict[str, Exception] = {
    "throttling": _client_error("ThrottlingException", 400),
    "request throttled": _client_error("AWS.SimpleQueueService.RequestThrottled", 403),
    "server error": _client_error("InternalError", 500),
    "unknown 503": _client_error("Whatever", 503),
    "connection refused": EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    "read timeout": ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
}
PERMANENT: dict[str, Exception] = {
    "invalid parameter": _client_error("InvalidParameterValue", 400),
    "invalid contents": _client_error("InvalidMessageContents", 400),
    "too long": _client_error("MessageTooLong", 400),
    "batch too long": _client_error("AWS.SimpleQueueService.BatchRequestTooLong", 400),
    "no queue": _client_error("AWS.SimpleQueueService.NonExistentQueue", 400),
    "no queue (json)": _client_error("QueueDoesNotExist", 400),
    "attribute name": _client_error("InvalidAttributeName", 400),
}


@pytest.fixture
def translate() -> Iterator[Callable[[Exception], DeliveryError]]:
    def run(error: Exception) -> DeliveryError:
        return aws._translate(error, "send_message_batch")

    yield run


@pytest.mark.parametrize("error", RETRIED.values(), ids=RETRIED.keys())
def test_transient_errors_are_retried(
    translate: Callable[[Exception], DeliveryError], error: Exception
) -> None:
    translated = translate(error)
    assert type(translated) is DeliveryError
    assert "send_message_batch" in str(translated)


@pytest.mark.parametrize("error", PERMANENT.values(), ids=PERMANENT.keys())
def test_errors_sqs_will_never_accept_dead_letter(
    translate: Callable[[Exception], DeliveryError], error: Exception
) -> None:
    translated = translate(error)
    assert isinstance(translated, PermanentDeliveryError)
    assert "says so" in str(translated), "the reason must be kept"


def test_failed_entries_are_classified_by_code_and_sender_fault() -> None:
    throttled = aws._entry_error({"Id": "1", "Code": "RequestThrottled", "SenderFault": True})
    internal = aws._entry_error({"Id": "1", "Code": "InternalError", "SenderFault": False})
    invalid = aws._entry_error({"Id": "1", "Code": "InvalidMessageContents", "SenderFault": True})
    unknown_sender = aws._entry_error({"Id": "1", "Code": "Novel", "SenderFault": True})

    assert type(throttled) is DeliveryError and type(internal) is DeliveryError
    assert isinstance(invalid, PermanentDeliveryError)
    assert isinstance(unknown_sender, PermanentDeliveryError)
