"""A small Pub/Sub server of the test tree's own, for machines without Google's emulator.

It speaks the real gRPC API (so tests use the real ``google-cloud-pubsub`` clients through
``PUBSUB_EMULATOR_HOST``), built from the proto-plus types inside google-cloud-pubsub, whose
``serialize``/``deserialize`` plug straight into grpc generic handlers. It implements what the
tests use:

- Publisher: ``CreateTopic``, ``GetTopic``, ``DeleteTopic``, ``Publish`` (``NOT_FOUND`` for a
  missing topic; ``INVALID_ARGUMENT`` for an empty or oversized message or attributes over
  Pub/Sub's limits; the whole request fails, as on Pub/Sub).
- Subscriber: ``CreateSubscription``, ``GetSubscription``, ``Pull``, ``Acknowledge``; a
  subscription with message ordering holds back a key's later messages while an earlier one is
  unacknowledged. Unacknowledged messages are never redelivered (no ack deadlines).

State lives in memory and is lost on ``stop()``, as with the emulator. Run it on its own with
``python -m tests.servers.pubsub_fake --port 8085``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import itertools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

MAX_MESSAGE_SIZE = 10_000_000  # bytes of one message (data, attributes, ordering key)
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_SIZE = 256  # bytes
MAX_ATTRIBUTE_VALUE_SIZE = 1024  # bytes
MAX_GRPC_MESSAGE = 32 * 1024 * 1024  # bytes a gRPC call may carry, above Pub/Sub's limits
WORKERS = 8

Request = TypeVar("Request")
Response = TypeVar("Response")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclasses.dataclass
class _Subscription:
    name: str
    topic: str
    ordered: bool
    queue: collections.deque[types.PubsubMessage] = dataclasses.field(
        default_factory=collections.deque
    )
    outstanding: dict[str, types.PubsubMessage] = dataclasses.field(default_factory=dict)


class _State:
    """Topics, subscriptions and their messages; every method holds the lock."""

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self.lock = threading.Lock()
        self.topics: dict[str, types.Topic] = {}
        self.subscriptions: dict[str, _Subscription] = {}
        self.ids = itertools.count(1)

    # -- publisher --------------------------------------------------------------------------

    def create_topic(self, topic: types.Topic) -> types.Topic:
        with self.lock:
            if topic.name in self.topics:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            self.topics[topic.name] = topic
            return topic

    def get_topic(self, request: types.GetTopicRequest) -> types.Topic:
        with self.lock:
            return self._topic(request.topic)

    def delete_topic(self, request: types.DeleteTopicRequest) -> empty_pb2.Empty:
        with self.lock:
            self._topic(request.topic)
            del self.topics[request.topic]
            return empty_pb2.Empty()

    def publish(self, request: types.PublishRequest) -> types.PublishResponse:
        with self.lock:
            self._topic(request.topic)
            for message in request.messages:
                self._check(message)
            now = datetime.datetime.now(datetime.timezone.utc)
            ids = []
            for message in request.messages:
                stored = types.PubsubMessage(
                    data=message.data,
                    attributes=dict(message.attributes),
                    ordering_key=message.ordering_key,
                    message_id=str(next(self.ids)),
                    publish_time=now,
                )
                ids.append(stored.message_id)
                for subscription in self.subscriptions.values():
                    if subscription.topic == request.topic:
                        subscription.queue.append(stored)
            return types.PublishResponse(message_ids=ids)

    def _topic(self, name: str) -> types.Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
        return topic

    def _check(self, message: types.PubsubMessage) -> None:
        if not message.data and not message.attributes:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Some messages are empty")
        size = types.PubsubMessage.pb(message).ByteSize()
        if size > self.max_message_size:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Message size {size} exceeds the limit of {self.max_message_size} bytes",
            )
        if len(message.attributes) > MAX_ATTRIBUTES:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Too many attributes")
        for key, value in message.attributes.items():
            if len(key.encode()) > MAX_ATTRIBUTE_KEY_SIZE or key.startswith("goog"):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid attribute key {key!r}")
            if len(value.encode()) > MAX_ATTRIBUTE_VALUE_SIZE:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Attribute {key!r} too long")

    # -- subscriber -------------------------------------------------------------------------

    def create_subscription(self, subscription: types.Subscription) -> types.Subscription:
        with self.lock:
            self._topic(subscription.topic)
            if subscription.name in self.subscriptions:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            self.subscriptions[subscription.name] = _Subscription(
                subscription.name, subscription.topic, subscription.enable_message_ordering
            )
            return subscription

    def get_subscription(self, request: types.GetSubscriptionRequest) -> types.Subscription:
        with self.lock:
            found = self._subscription(request.subscription)
            return types.Subscription(
                name=found.name, topic=found.topic, enable_message_ordering=found.ordered
            )

    def pull(self, request: types.PullRequest) -> types.PullResponse:
        with self.lock:
            subscription = self._subscription(request.subscription)
            limit = request.max_messages or 1
            # Ordering: a key whose earlier message is unacknowledged is held back.
            held = {m.ordering_key for m in subscription.outstanding.values() if m.ordering_key}
            received: list[types.ReceivedMessage] = []
            kept: collections.deque[types.PubsubMessage] = collections.deque()
            while subscription.queue:
                message = subscription.queue.popleft()
                blocked = subscription.ordered and message.ordering_key in held
                if blocked or len(received) >= limit:
                    if subscription.ordered and message.ordering_key:
                        held.add(message.ordering_key)
                    kept.append(message)
                    continue
                ack_id = f"{subscription.name}:{message.message_id}"
                subscription.outstanding[ack_id] = message
                received.append(types.ReceivedMessage(ack_id=ack_id, message=message))
            subscription.queue = kept
            return types.PullResponse(received_messages=received)

    def acknowledge(self, request: types.AcknowledgeRequest) -> empty_pb2.Empty:
        with self.lock:
            subscription = self._subscription(request.subscription)
            for ack_id in request.ack_ids:
                subscription.outstanding.pop(ack_id, None)
            return empty_pb2.Empty()

    def _subscription(self, name: str) -> _Subscription:
        subscription = self.subscriptions.get(name)
        if subscription is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
        return subscription


def _unary(
    method: Callable[[Any], Any], request_type: Any, response_type: Any
) -> grpc.RpcMethodHandler:
    """A grpc handler for ``method``, (de)serialising with proto-plus (or protobuf) types."""

    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request)
        except _Abort as abort:
            context.abort(abort.code, abort.details)

    serialize = getattr(response_type, "serialize", None) or response_type.SerializeToString
    deserialize = getattr(request_type, "deserialize", None) or request_type.FromString
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=deserialize, response_serializer=serialize
    )


class FakePubSubServer:
    """The fake, served by ``grpc.server`` in this process on ``host:port`` (port 0: any free
    port; ``port`` tells which). Every ``start()`` begins with no topics."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_message_size: int = MAX_MESSAGE_SIZE
    ) -> None:
        self.host = host
        self.port = port
        self.max_message_size = max_message_size
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        state = _State(self.max_message_size)
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS),
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        publisher = {
            "CreateTopic": _unary(state.create_topic, types.Topic, types.Topic),
            "GetTopic": _unary(state.get_topic, types.GetTopicRequest, types.Topic),
            "DeleteTopic": _unary(state.delete_topic, types.DeleteTopicRequest, empty_pb2.Empty),
            "Publish": _unary(state.publish, types.PublishRequest, types.PublishResponse),
        }
        subscriber = {
            "CreateSubscription": _unary(
                state.create_subscription, types.Subscription, types.Subscription
            ),
            "GetSubscription": _unary(
                state.get_subscription, types.GetSubscriptionRequest, types.Subscription
            ),
            "Pull": _unary(state.pull, types.PullRequest, types.PullResponse),
            "Acknowledge": _unary(state.acknowledge, types.AcknowledgeRequest, empty_pb2.Empty),
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
                grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
            )
        )
        self.port = server.add_insecure_port(self.address)
        server.start()
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    arguments = parser.parse_args()
    server = FakePubSubServer(arguments.host, arguments.port)
    server.start()
    print(f"fake Pub/Sub listening on {server.address}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
