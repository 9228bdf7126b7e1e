"""GoogleCloudSimplePubSubHandler: events published to a real Pub/Sub server.

Every test with an Outbox runs on SQLite and on PostgreSQL (``make_outbox``), delivers through
the real relay (``outbox.drain()``), and reads the topic through a subscription with the real
google-cloud-pubsub clients: on Google's emulator where it is installed, else on the fake of
``tests/servers/pubsub_fake.py`` (``OUTBOX_TEST_PUBSUB=fake`` forces the fake).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import trace

from outbox_events import (
    ConfigurationError,
    DeliveryError,
    Event,
    Outbox,
    PermanentDeliveryError,
    dispatch,
)
from outbox_events.handlers.gcp import GoogleCloudSimplePubSubHandler
from outbox_events.retry import RetryPolicy
from outbox_events.store.tables import DEAD, DELIVERED, PENDING
from tests.helpers import FakeClock, outbox_row, outbox_rows, sampled_span
from tests.servers.pubsub import (
    PROJECT,
    STRICT_MAX_MESSAGE_SIZE,
    PubSubServer,
    PubSubTopic,
    Received,
    private_pubsub_server_fixture,  # noqa: F401  (the fixtures this module uses)
    pubsub_fixture,  # noqa: F401
    pubsub_server,  # noqa: F401
    strict_pubsub_fake_fixture,  # noqa: F401
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "vendor=opaque"
RELAY_TIMEOUT = 30.0  # seconds to wait for the background relay before failing the test
RECONNECT_ROUNDS = 120  # drains tried while the client reconnects after an outage
RECONNECT_PAUSE = 0.25  # seconds between those drains


async def dispatch_all(outbox: Outbox, *events: tuple[Any, ...]) -> list[uuid.UUID]:
    """Dispatch ``(name, payload[, key[, headers]])`` in one unit of work; return the ids."""
    async with outbox.unit_of_work():
        ids = []
        for name, payload, *rest in events:
            key: str | None = rest[0] if rest else None
            headers: dict[str, str] | None = rest[1] if len(rest) > 1 else None
            ids.append(dispatch(name, payload, key=key, headers=headers))
        return ids


def by_event_id(messages: list[Received]) -> dict[str, Received]:
    return {m.attributes["event_id"]: m for m in messages}


def handler_for(topic: PubSubTopic, **options: Any) -> GoogleCloudSimplePubSubHandler:
    return GoogleCloudSimplePubSubHandler(PROJECT, topic.topic, **options)


# -- what arrives ------------------------------------------------------------------------------


async def test_events_arrive_with_fastapi_events_body_id_name_and_header_attributes(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    outbox = make_outbox(handlers=[handler_for(pubsub)])
    keyed, plain = await dispatch_all(
        outbox,
        ("order.paid", {"id": 7, "total": "10.00"}, "order-7", {"tenant": "acme", "x-b3": "1"}),
        ("user.created", ["ann", 3]),
    )
    result = await outbox.drain()

    assert result.delivered == 2
    messages = by_event_id(await pubsub.pull(2))
    paid = messages[str(keyed)]
    assert json.loads(paid.data) == ["order.paid", {"id": 7, "total": "10.00"}], (
        "the default body must be fastapi-events' [name, payload]"
    )
    assert paid.attributes == {
        "event_id": str(keyed),
        "event_name": "order.paid",
        "event_key": "order-7",
        "header.tenant": "acme",
        "header.x-b3": "1",
    }
    assert paid.ordering_key == "order-7", "the ordering key must be the event's key"
    created = messages[str(plain)]
    assert json.loads(created.data) == ["user.created", ["ann", 3]]
    assert created.attributes == {"event_id": str(plain), "event_name": "user.created"}
    assert created.ordering_key == ""
    assert (await outbox_row(outbox, event_id=keyed))["state"] == DELIVERED


async def test_trace_context_of_the_dispatching_code_travels_as_attributes(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    span = sampled_span()
    outbox = make_outbox(handlers=[handler_for(pubsub)])
    async with outbox.unit_of_work():
        with trace.use_span(span):
            traced = dispatch("order.placed", {"id": 1})
        untraced = dispatch("order.placed", {"id": 2})
    await outbox.drain()

    messages = by_event_id(await pubsub.pull(2))
    assert messages[str(traced)].attributes["traceparent"] == TRACEPARENT
    assert messages[str(traced)].attributes["tracestate"] == TRACESTATE
    assert not {"traceparent", "tracestate"} & set(messages[str(untraced)].attributes)


async def test_too_many_or_too_long_headers_dead_letter_only_that_event(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    outbox = make_outbox(handlers=[handler_for(pubsub)])
    many, long_value, fine = await dispatch_all(
        outbox,
        ("tick", {}, None, {f"h{i}": "v" for i in range(100)}),
        ("tick", {}, None, {"note": "x" * 2000}),
        ("tick", {}, None, {"note": "short"}),
    )
    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered) == (1, 2)
    assert "Pub/Sub allows 100" in (await outbox_row(outbox, event_id=many))["last_error"]
    assert "header.note" in (await outbox_row(outbox, event_id=long_value))["last_error"]
    [message] = await pubsub.pull(1)
    assert message.attributes["event_id"] == str(fine)


async def test_envelope_body_carries_id_name_payload_key_headers_and_time(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    outbox = make_outbox(handlers=[handler_for(pubsub, body_format="envelope")])
    [event_id] = await dispatch_all(
        outbox, ("order.paid", {"id": 7}, "order-7", {"tenant": "acme"})
    )
    await outbox.drain()

    [message] = await pubsub.pull(1)
    body = json.loads(message.data)
    created_at = (await outbox_row(outbox, event_id=event_id))["created_at"]
    assert body == {
        "id": str(event_id),
        "name": "order.paid",
        "payload": {"id": 7},
        "key": "order-7",
        "headers": {"tenant": "acme"},
        "created_at": created_at.isoformat(),
    }
    assert message.attributes["event_id"] == str(event_id)


async def test_fastapi_events_positional_arguments_and_serializer_work(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    def serializer(event: Event) -> str:
        name, payload = event
        return f"{name}:{payload['n']}"

    # fastapi-events' own signature, with batch_settings_kwargs=None, which it crashed on
    handler = GoogleCloudSimplePubSubHandler(PROJECT, pubsub.topic, 1000, None, serializer)
    outbox = make_outbox(handlers=[handler])
    await dispatch_all(outbox, ("tick", {"n": 1}), ("tick", {"n": 2}))
    result = await outbox.drain()

    assert result.delivered == 2
    assert sorted(m.data for m in await pubsub.pull(2)) == [b"tick:1", b"tick:2"]


async def test_each_keys_events_arrive_in_dispatch_order(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    keys = ("cart-1", "cart-2", "cart-3")
    per_key = 4
    outbox = make_outbox(handlers=[handler_for(pubsub)])
    await dispatch_all(
        outbox,
        *[("cart.changed", {"key": key, "n": n}, key) for n in range(per_key) for key in keys],
        *[("cart.viewed", {"n": n}) for n in range(3)],
    )
    result = await outbox.drain()

    total = len(keys) * per_key + 3
    assert result.delivered == total
    messages = await pubsub.pull(total)
    sequences: defaultdict[str, list[int]] = defaultdict(list)
    for message in messages:
        name, payload = json.loads(message.data)
        if name == "cart.changed":
            assert message.ordering_key == payload["key"]
            sequences[message.ordering_key].append(payload["n"])
        else:
            assert message.ordering_key == ""
    assert dict(sequences) == {key: list(range(per_key)) for key in keys}, (
        "a key's events must reach the subscriber in dispatch order"
    )


async def test_event_name_patterns_choose_what_is_published(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    handler = handler_for(pubsub, name="orders-topic", event_name=["order.*", "refund.issued"])
    outbox = make_outbox(handlers=[handler])
    await dispatch_all(
        outbox,
        ("order.placed", {}),
        ("user.created", {}),
        ("refund.issued", {}),
        ("orders", {}),
    )
    await outbox.drain()

    names = sorted(json.loads(m.data)[0] for m in await pubsub.pull(2))
    assert names == ["order.placed", "refund.issued"]
    assert await pubsub.pull_more() == [], "events the patterns do not match were published"
    assert {row["destination"] for row in await outbox_rows(outbox)} == {"orders-topic"}


# -- failures ------------------------------------------------------------------------------------


async def test_oversized_event_is_dead_lettered_with_the_reason_while_others_are_delivered(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    outbox = make_outbox(handlers=[handler_for(pubsub, max_message_size=4096)])
    small, big, keyed = await dispatch_all(
        outbox,
        ("doc.saved", {"text": "short"}),
        ("doc.saved", {"text": "x" * 8000}),
        ("doc.saved", {"text": "short too"}, "doc-1"),
    )
    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered, result.retried) == (2, 1, 0)
    row = await outbox_row(outbox, event_id=big)
    assert row["state"] == DEAD and row["attempts"] == 1, "too large must not be retried"
    assert "message too large" in row["last_error"] and "4096" in row["last_error"]
    assert set(by_event_id(await pubsub.pull(2))) == {str(small), str(keyed)}


async def test_message_the_server_rejects_is_dead_lettered_alone(
    make_outbox: Callable[..., Outbox], strict_pubsub_fake: PubSubServer
) -> None:
    """One bad message fails the whole Publish request it shares with others; only it is
    dead-lettered (a server that accepts less than Pub/Sub: the strict fake)."""
    topic = PubSubTopic()
    await topic.create()
    # The handler's own size check lets the big one through; the server refuses it.
    outbox = make_outbox(handlers=[handler_for(topic, enable_message_ordering=False)])
    ids = await dispatch_all(
        outbox,
        ("doc.saved", {"n": 1}),
        ("doc.saved", {"n": 2, "text": "x" * STRICT_MAX_MESSAGE_SIZE}),
        ("doc.saved", {"n": 3}),
        ("doc.saved", {"n": 4}, "doc-4"),
    )
    result = await outbox.drain()

    assert (result.delivered, result.dead_lettered) == (3, 1)
    row = await outbox_row(outbox, event_id=ids[1])
    assert row["state"] == DEAD
    assert "InvalidArgument" in row["last_error"] and "exceeds the limit" in row["last_error"]
    assert set(by_event_id(await topic.pull(3))) == {str(ids[0]), str(ids[2]), str(ids[3])}


async def test_missing_topic_dead_letters_at_once(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    missing = PubSubTopic(topic="never-created")  # ``pubsub`` points the client at the server
    outbox = make_outbox(handlers=[handler_for(missing)])
    ids = await dispatch_all(outbox, ("order.paid", {}, "order-1"), ("order.paid", {}))
    result = await outbox.drain()

    assert (result.dead_lettered, result.retried, result.delivered) == (2, 0, 0)
    for event_id in ids:
        row = await outbox_row(outbox, event_id=event_id)
        assert row["state"] == DEAD and row["attempts"] == 1
        assert "NotFound" in row["last_error"] and missing.topic_path in row["last_error"]


async def test_outage_backs_off_then_delivers_everything_in_order_once_the_server_is_back(
    make_outbox: Callable[..., Outbox], private_pubsub_server: PubSubServer
) -> None:
    server = private_pubsub_server
    topic = PubSubTopic()
    await topic.create()
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=RECONNECT_ROUNDS + 10, initial_delay=1, jitter=0)
    handler = handler_for(topic, publish_timeout=5)
    outbox = make_outbox(handlers=[handler], clock=clock, retry=retry)
    await dispatch_all(outbox, ("tick", {"n": 0}, "a"), ("tick", {"n": 0}, "b"))
    assert (await outbox.drain()).delivered == 2
    before = await topic.pull(2)

    await asyncio.to_thread(server.stop)
    a1, _, a2, _, _ = await dispatch_all(
        outbox,
        ("tick", {"n": 1}, "a"),
        ("tick", {"n": 1}, "b"),
        ("tick", {"n": 2}, "a"),
        ("tick", {"n": 2}, "b"),
        ("tick", {"n": 1}),
    )
    first = await outbox.drain()
    first_row = await outbox_row(outbox, event_id=a1)
    clock.advance(1)
    second = await outbox.drain()
    second_row = await outbox_row(outbox, event_id=a1)

    # a1, b1 and the unkeyed one are tried; a2 and b2 wait behind their keys
    assert (first.retried, first.delivered, first.dead_lettered) == (3, 0, 0)
    assert (second.retried, second.delivered) == (3, 0)
    assert "ServiceUnavailable" in first_row["last_error"]
    assert first_row["available_at"] == clock.now, "first retry 1 s after the failure"
    assert second_row["available_at"] == clock.now + timedelta(seconds=2), "backoff doubles"
    assert (await outbox_row(outbox, event_id=a2))["attempts"] == 0, "a2 must wait for a1"

    await asyncio.to_thread(server.start)  # same port; it starts empty
    await topic.create()
    for _ in range(RECONNECT_ROUNDS):  # the client reconnects after gRPC's own backoff
        clock.advance(3600)
        await outbox.drain()
        if not await outbox_rows(outbox, state=PENDING):
            break
        await asyncio.sleep(RECONNECT_PAUSE)

    assert [row["state"] for row in await outbox_rows(outbox)] == [DELIVERED] * 7
    after = await topic.pull(5)
    sequences: defaultdict[str, list[int]] = defaultdict(list)
    for message in before + after:
        sequences[message.ordering_key].append(json.loads(message.data)[1]["n"])
    assert dict(sequences) == {"a": [0, 1, 2], "b": [0, 1, 2], "": [1]}, (
        "after the outage every key must resume, in order"
    )


async def test_close_flushes_messages_the_client_still_buffers(
    make_outbox: Callable[..., Outbox], pubsub: PubSubTopic
) -> None:
    count = 3
    serialized = asyncio.Event()
    calls: list[uuid.UUID] = []

    def serializer(event: Event) -> str:
        calls.append(event.id)
        if len(calls) == count:
            serialized.set()  # the handler publishes right after, before it awaits anything
        return json.dumps([event.name, event.payload])

    # Messages wait an hour for others to share their request: only close() sends them.
    handler = handler_for(
        pubsub, serializer=serializer, batch_settings_kwargs={"max_latency": 3600}
    )
    outbox = make_outbox(handlers=[handler])
    outbox.relay.configure(shutdown_timeout=0.2)
    ids = await dispatch_all(
        outbox, ("tick", {"n": 1}), ("tick", {"n": 2}, "k"), ("tick", {"n": 3})
    )
    outbox.ensure_started()
    await asyncio.wait_for(serialized.wait(), RELAY_TIMEOUT)
    await outbox.close()

    arrived = by_event_id(await pubsub.pull(count))
    assert set(arrived) == {str(event_id) for event_id in ids}, (
        "messages accepted by the client before close() must reach Pub/Sub"
    )


@pytest.mark.parametrize(
    ("error_name", "permanent"),
    [
        ("ServiceUnavailable", False),
        ("DeadlineExceeded", False),
        ("InternalServerError", False),
        ("Aborted", False),
        ("ResourceExhausted", False),
        ("Unknown", False),
        ("Unauthenticated", False),
        ("InvalidArgument", True),
        ("NotFound", True),
        ("PermissionDenied", True),
    ],
)
def test_client_errors_are_retried_or_dead_lettered_as_documented(
    error_name: str, permanent: bool
) -> None:
    from google.api_core import exceptions as google_exceptions

    handler = GoogleCloudSimplePubSubHandler(PROJECT, "topic")
    error = getattr(google_exceptions, error_name)("boom")
    translated = handler._translate(error)

    assert isinstance(translated, DeliveryError)
    assert isinstance(translated, PermanentDeliveryError) is permanent
    assert translated.__cause__ is error, "the client's error must stay attached as the cause"
    assert error_name in str(translated) and "projects/outbox-tests/topics/topic" in str(translated)


def test_message_over_the_clients_request_limit_is_permanent() -> None:
    from google.cloud.pubsub_v1.publisher.exceptions import MessageTooLargeError

    handler = GoogleCloudSimplePubSubHandler(PROJECT, "topic")
    translated = handler._translate(MessageTooLargeError("too large a publish request"))

    assert isinstance(translated, PermanentDeliveryError)
    assert "too large" in str(translated)


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1001, 2.5, True])
def test_max_batch_size_outside_pubsubs_limit_is_refused(size: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_batch_size"):
        GoogleCloudSimplePubSubHandler(PROJECT, "topic", max_batch_size=size)


def test_serializer_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="serializer must be callable"):
        GoogleCloudSimplePubSubHandler(PROJECT, "topic", serializer="json")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_settings_kwargs": {"max_latency": float("inf")}}, "max_latency"),
        ({"batch_settings_kwargs": {"max_messages": 10}}, "max_batch_size"),
        ({"batch_settings_kwargs": {"max_size": 10}}, "max_bytes"),
        ({"max_message_size": 10_000_001}, "max_message_size"),
        ({"body_format": "xml"}, "body_format"),
        ({"publish_timeout": 0}, "publish_timeout"),
        ({"client_kwargs": {"batch_settings": ()}}, "client_kwargs"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        GoogleCloudSimplePubSubHandler(PROJECT, "topic", **options)


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.pubsub_v1", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'outbox-events\[pubsub\]'"):
        GoogleCloudSimplePubSubHandler(PROJECT, "topic")
