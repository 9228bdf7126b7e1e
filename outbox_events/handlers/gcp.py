"""Google Cloud Pub/Sub destination: :class:`GoogleCloudSimplePubSubHandler`.

Needs the ``pubsub`` extra (``pip install 'outbox-events[pubsub]'``); google-cloud-pubsub is
imported when a handler is made, not when this module is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from outbox_events.exceptions import (
    ConfigurationError,
    DeliveryError,
    PartialDeliveryError,
    PermanentDeliveryError,
)
from outbox_events.handlers import _format
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.names import EventName
from outbox_events.typing import Event

__all__ = ["GoogleCloudSimplePubSubHandler"]

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 1000  # messages per Publish request: Pub/Sub's limit
PUBSUB_MAX_REQUEST_SIZE = 10_000_000  # bytes of one Publish request: Pub/Sub's limit
MAX_MESSAGE_SIZE = PUBSUB_MAX_REQUEST_SIZE  # bytes; default of max_message_size
MAX_ATTRIBUTES = 100  # attributes per message: Pub/Sub's limit
MAX_ATTRIBUTE_KEY_SIZE = 256  # bytes (UTF-8): Pub/Sub's limit
MAX_ATTRIBUTE_VALUE_SIZE = 1024  # bytes (UTF-8): Pub/Sub's limit
MAX_ORDERING_KEY_SIZE = 1024  # bytes (UTF-8): Pub/Sub's limit
PUBLISH_TIMEOUT = 20.0  # seconds one Publish request may take; keep it below the Outbox lease
KEY_ATTRIBUTE = _format.EVENT_KEY_ATTRIBUTE
HEADER_ATTRIBUTE_PREFIX = "header."  # dispatch(headers={"x": ...}) -> attribute "header.x"
RESERVED_ATTRIBUTE_PREFIX = "goog"  # Pub/Sub rejects attribute keys starting with it
EXTRA_HINT = "pip install 'outbox-events[pubsub]'"

# Options of PublisherClient that the handler sets itself.
_OWN_CLIENT_KWARGS = frozenset({"batch_settings", "publisher_options"})


def _import(module: str) -> Any:
    """A google-cloud-pubsub module, or a ConfigurationError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"GoogleCloudSimplePubSubHandler needs google-cloud-pubsub: {EXTRA_HINT}"
        ) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class _Message:
    data: bytes
    attributes: dict[str, str]
    ordering_key: str


@dataclasses.dataclass(slots=True)
class _Publish:
    event: Event
    message: _Message
    future: concurrent.futures.Future[str]


class GoogleCloudSimplePubSubHandler(BaseEventHandler):
    """Publishes events to one Google Cloud Pub/Sub topic.

    The positional arguments are those of fastapi-events' handler of the same name. Each relay
    batch is published at once (the client groups the messages into Publish requests of up to
    ``max_batch_size``) and every message is confirmed by Pub/Sub before its event counts as
    delivered; events that failed are retried or dead-lettered one by one.

    Messages carry attributes ``event_id``, ``event_name``, ``event_key`` (events with a key),
    the dispatching code's W3C trace context (``traceparent``, ``tracestate``) and one
    ``header.<name>`` per header; with ``enable_message_ordering`` the event's key is also the
    message's ordering key.

    Args:
        project_id: The Google Cloud project of the topic.
        topic_id: The topic (short name, not the ``projects/.../topics/...`` path).
        max_batch_size: Most messages per Publish request (1 to 1000).
        batch_settings_kwargs: More ``BatchSettings`` of the client: ``max_bytes`` and
            ``max_latency`` (seconds a message may wait for others to share its request).
        serializer: Turns an event into the message body (str is encoded as UTF-8, bytes are
            sent as they are); overrides ``body_format``.
        name: The destination's name (default: the class's qualified name); give each
            handler of this class its own.
        event_name: fnmatch pattern(s) of the event names published (default: all).
        body_format: ``"fastapi-events"`` (``["name", payload]``, as fastapi-events sent) or
            ``"envelope"`` (an object with id, name, payload, key, headers, created_at).
        enable_message_ordering: Publish with the event's key as ordering key (subscriptions
            with message ordering then receive each key's events in dispatch order).
        max_message_size: Largest Publish request for one message (data, attributes,
            ordering key and topic), in bytes; larger events are dead-lettered. At most
            Pub/Sub's limit of 10 MB, the default.
        publish_timeout: Seconds one Publish request may take before it counts as failed and
            the relay retries it; keep it below the Outbox's ``lease``.
        client_kwargs: Extra keyword arguments for ``PublisherClient`` (``credentials``,
            ``client_options`` such as a regional ``api_endpoint``, ``transport``).

    Raises:
        ConfigurationError: google-cloud-pubsub is not installed, or an argument is invalid.
    """

    def __init__(
        self,
        project_id: str,
        topic_id: str,
        max_batch_size: int = MAX_BATCH_SIZE,
        batch_settings_kwargs: Mapping[str, Any] | None = None,
        serializer: _format.Serializer | None = None,
        *,
        name: str | None = None,
        event_name: EventName | Iterable[EventName] = "*",
        body_format: _format.BodyFormat = "fastapi-events",
        enable_message_ordering: bool = True,
        max_message_size: int = MAX_MESSAGE_SIZE,
        publish_timeout: float = PUBLISH_TIMEOUT,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name=name, event_name=event_name)
        for label, value in (("project_id", project_id), ("topic_id", topic_id)):
            if not isinstance(value, str) or not value or "/" in value:
                raise ConfigurationError(
                    f"{label} must be a non-empty str without '/', got {value!r}"
                )
        if not _is_int(max_batch_size) or not 1 <= max_batch_size <= MAX_BATCH_SIZE:
            raise ConfigurationError(
                f"max_batch_size must be an int from 1 to {MAX_BATCH_SIZE} (Pub/Sub's limit "
                f"of messages per request), got {max_batch_size!r}"
            )
        if not _is_int(max_message_size) or not 1 <= max_message_size <= PUBSUB_MAX_REQUEST_SIZE:
            raise ConfigurationError(
                f"max_message_size must be an int from 1 to {PUBSUB_MAX_REQUEST_SIZE} bytes "
                f"(Pub/Sub's limit), got {max_message_size!r}"
            )
        if not _is_positive_number(publish_timeout):
            raise ConfigurationError(
                f"publish_timeout must be a positive number of seconds, got {publish_timeout!r}"
            )
        self._serializer = _format.serializer_for(serializer, body_format)
        self._ordering = bool(enable_message_ordering)
        self._max_message_size = max_message_size
        self._publish_timeout = float(publish_timeout)
        self._client_kwargs = _client_kwargs(client_kwargs)

        pubsub = _import("google.cloud.pubsub_v1")
        self._pubsub = pubsub
        self._publisher_exceptions = _import("google.cloud.pubsub_v1.publisher.exceptions")
        self._batch_settings = pubsub.types.BatchSettings(
            **_batch_settings(max_batch_size, batch_settings_kwargs)
        )
        self._topic: str = pubsub.PublisherClient.topic_path(project_id, topic_id)
        pubsub_types = _import("google.pubsub_v1.types")
        self._message_pb = pubsub_types.PubsubMessage.pb()
        self._request_pb = pubsub_types.PublishRequest.pb()
        self._base_request_size: int = self._request_pb(topic=self._topic).ByteSize()

        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._outstanding: set[concurrent.futures.Future[str]] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(topic={self._topic!r}, name={self.destination_name!r})"

    @property
    def topic_path(self) -> str:
        """``projects/<project_id>/topics/<topic_id>``."""
        return self._topic

    # -- delivering --------------------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        """Publish one event; raise its own error if it failed."""
        try:
            await self.handle_many([event])
        except PartialDeliveryError as exc:
            error = exc.failures[event.id]
        else:
            return
        raise error

    async def handle_many(self, events: Sequence[Event]) -> None:
        """Publish every event of the batch and wait until Pub/Sub has confirmed each.

        Raises:
            PartialDeliveryError: naming each event that failed, with a
                ``PermanentDeliveryError`` (rejected: too large, invalid, topic missing, no
                permission) or a ``DeliveryError`` (to retry) whose cause is the client's error.
        """
        client = await self._publisher()
        failures: dict[object, BaseException] = {}
        published: list[_Publish] = []
        # No await in this loop: the whole batch is handed to the client in one go.
        for event in events:
            try:
                message = self._message(event)
                future = self._publish(client, message)
            except DeliveryError as exc:
                failures[event.id] = exc
                continue
            published.append(_Publish(event, message, future))
        if published:
            await _all_done([publish.future for publish in published])
            rejected: dict[int, list[_Publish]] = {}
            for publish in published:
                error = publish.future.exception()
                if error is not None:
                    self._resume(client, publish.message.ordering_key)
                    failures[publish.event.id] = self._translate(error)
                    if _may_be_one_messages_fault(error):
                        rejected.setdefault(id(error), []).append(publish)
            for group in rejected.values():
                if len(group) > 1:
                    # One rejected Publish request failed all of its messages: find the bad ones
                    # so that the others are not dead-lettered with them.
                    for publish in group:
                        alone = await self._publish_alone(client, publish.message)
                        if alone is None:
                            del failures[publish.event.id]
                        else:
                            failures[publish.event.id] = alone
        if failures:
            raise PartialDeliveryError(failures)

    async def _publish_alone(self, client: Any, message: _Message) -> DeliveryError | None:
        """Publish one message in a request of its own; its error, or None once delivered."""
        try:
            future = self._publish(client, message)
        except DeliveryError as exc:
            return exc
        await _all_done([future])
        error = future.exception()
        if error is None:
            return None
        self._resume(client, message.ordering_key)
        return self._translate(error)

    def _publish(self, client: Any, message: _Message) -> concurrent.futures.Future[str]:
        """Hand one message to the client; the future completes with its message id."""
        try:
            future: concurrent.futures.Future[str] = client.publish(
                self._topic,
                message.data,
                ordering_key=message.ordering_key,
                # The relay retries failed events with backoff; the client's own retries would
                # outlast the claim's lease (with ordering they never end).
                retry=None,
                timeout=self._publish_timeout,
                **message.attributes,
            )
        except Exception as exc:
            self._resume(client, message.ordering_key)
            raise self._translate(exc) from exc
        self._outstanding.add(future)
        future.add_done_callback(self._outstanding.discard)
        return future

    def _message(self, event: Event) -> _Message:
        """The Pub/Sub message for ``event``; PermanentDeliveryError when Pub/Sub would reject
        it (checked here, so that one bad event does not fail a request shared with others)."""
        try:
            body = self._serializer(event)
        except Exception as exc:
            raise DeliveryError(
                f"the serializer failed on event {event.id}: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(body, str):
            data = body.encode("utf-8", "surrogatepass")
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        else:
            raise PermanentDeliveryError(
                f"the serializer must return str or bytes, got {type(body).__name__}"
            )
        attributes = _format.event_attributes(event)
        for header, value in event.headers.items():
            attributes[HEADER_ATTRIBUTE_PREFIX + header] = value
        _check_attributes(attributes)
        ordering_key = (event.key or "") if self._ordering else ""
        if len(ordering_key.encode("utf-8")) > MAX_ORDERING_KEY_SIZE:
            raise PermanentDeliveryError(
                f"the ordering key is longer than Pub/Sub's {MAX_ORDERING_KEY_SIZE} bytes"
            )
        size = self._request_size(data, attributes, ordering_key)
        if size > self._max_message_size:
            raise PermanentDeliveryError(
                f"message too large: {size} bytes for topic {self._topic}, "
                f"max_message_size is {self._max_message_size}"
            )
        return _Message(data, attributes, ordering_key)

    def _request_size(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> int:
        """Bytes of a Publish request holding only this message (what Pub/Sub limits)."""
        message = self._message_pb(data=data, attributes=attributes, ordering_key=ordering_key)
        size: int = self._request_pb(messages=[message]).ByteSize()
        return self._base_request_size + size

    # -- errors -------------------------------------------------------------------------------

    def _translate(self, error: BaseException) -> DeliveryError:
        """The library's error for a client error: permanent when Pub/Sub will never take the
        message, retryable otherwise."""
        if isinstance(error, DeliveryError):
            return error
        publisher_exceptions = self._publisher_exceptions
        message = str(error)
        described = f"{type(error).__name__}: {message}" if message else type(error).__name__
        translated: DeliveryError
        if isinstance(error, publisher_exceptions.MessageTooLargeError):
            translated = PermanentDeliveryError(f"message too large for Pub/Sub: {error}")
        elif self._is_rejection(error):
            translated = PermanentDeliveryError(
                f"Pub/Sub rejected the message for {self._topic}: {described}"
            )
        elif isinstance(error, publisher_exceptions.PublishToPausedOrderingKeyException):
            translated = DeliveryError(
                f"ordering key {error.ordering_key!r} was paused by an earlier failure; resumed"
            )
        else:
            translated = DeliveryError(f"publishing to {self._topic} failed: {described}")
        translated.__cause__ = error
        return translated

    @staticmethod
    def _is_rejection(error: BaseException) -> bool:
        """Whether Pub/Sub answered that it will never take this message as it is."""
        from google.api_core import exceptions as google_exceptions

        return isinstance(
            error,
            (
                google_exceptions.InvalidArgument,
                google_exceptions.NotFound,
                google_exceptions.PermissionDenied,
            ),
        )

    def _resume(self, client: Any, ordering_key: str) -> None:
        """Let a key publish again after a failure paused it (the relay decides on retries)."""
        if not ordering_key or not self._ordering:
            return
        try:
            client.resume_publish(self._topic, ordering_key)
        except (RuntimeError, ValueError):  # not paused, or the client was stopped
            return
        logger.debug(
            "resumed ordering key after a failed publish",
            extra={"action": "pubsub_ordering_key_resumed", "topic": self._topic},
        )

    # -- the client ---------------------------------------------------------------------------

    async def _publisher(self) -> Any:
        """The handler's PublisherClient, created on first use (in a thread: finding
        credentials may do network I/O)."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                try:
                    self._client = await asyncio.to_thread(self._create_client)
                except Exception as exc:
                    raise DeliveryError(
                        f"could not create the Pub/Sub client: {type(exc).__name__}: {exc}"
                    ) from exc
            return self._client

    def _create_client(self) -> Any:
        pubsub = self._pubsub
        return pubsub.PublisherClient(
            batch_settings=self._batch_settings,
            publisher_options=pubsub.types.PublisherOptions(enable_message_ordering=self._ordering),
            **self._client_kwargs,
        )

    async def aclose(self) -> None:
        """Send the messages the client still buffers, wait for Pub/Sub's answers (up to
        ``publish_timeout``) and close the connection. A later event makes a new client."""
        async with self._client_lock:
            client, self._client = self._client, None
            if client is not None:
                await asyncio.to_thread(self._shut_down, client, set(self._outstanding))

    def _shut_down(self, client: Any, outstanding: set[concurrent.futures.Future[str]]) -> None:
        client.stop()  # commits every buffered batch now
        _, unfinished = concurrent.futures.wait(outstanding, timeout=self._publish_timeout)
        if unfinished:
            logger.warning(
                "%d Pub/Sub publish(es) unconfirmed at shutdown; the relay will send them again",
                len(unfinished),
                extra={"action": "pubsub_flush_incomplete", "topic": self._topic},
            )
        client.transport.close()


def _may_be_one_messages_fault(error: BaseException) -> bool:
    """Whether a rejected request may have failed for one of its messages (not for the topic:
    NotFound and PermissionDenied concern every message alike)."""
    from google.api_core import exceptions as google_exceptions

    return isinstance(error, google_exceptions.InvalidArgument)


async def _all_done(futures: Sequence[concurrent.futures.Future[str]]) -> None:
    """Wait until every future is done, without blocking the loop: the client's threads count
    them down, and the last one wakes the loop once (not once per message)."""
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    remaining = len(futures)
    lock = threading.Lock()

    def resolve() -> None:
        if not all_done.done():
            all_done.set_result(None)

    def count_down(_: concurrent.futures.Future[str]) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            last = remaining == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(resolve)

    for future in futures:
        future.add_done_callback(count_down)
    # Cancelling the wait leaves the messages with the client; aclose() still sends them.
    await all_done


def _check_attributes(attributes: Mapping[str, str]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise PermanentDeliveryError(
            f"the message would have {len(attributes)} attributes (event id, name, key, trace "
            f"context and one per header); Pub/Sub allows {MAX_ATTRIBUTES}"
        )
    for key, value in attributes.items():
        if len(key.encode("utf-8")) > MAX_ATTRIBUTE_KEY_SIZE:
            raise PermanentDeliveryError(
                f"attribute {key[:40]!r}... is longer than Pub/Sub's {MAX_ATTRIBUTE_KEY_SIZE} "
                "bytes for an attribute name"
            )
        if key.startswith(RESERVED_ATTRIBUTE_PREFIX):
            raise PermanentDeliveryError(
                f"attribute {key!r} starts with {RESERVED_ATTRIBUTE_PREFIX!r}, which Pub/Sub "
                "reserves"
            )
        if len(value.encode("utf-8")) > MAX_ATTRIBUTE_VALUE_SIZE:
            raise PermanentDeliveryError(
                f"attribute {key!r} has a value longer than Pub/Sub's "
                f"{MAX_ATTRIBUTE_VALUE_SIZE} bytes"
            )


def _batch_settings(max_batch_size: int, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """``BatchSettings`` arguments: ``max_messages`` from ``max_batch_size``, the rest from
    ``batch_settings_kwargs`` (None, fastapi-events' default, means none)."""
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise ConfigurationError(
            f"batch_settings_kwargs must be a mapping or None, got {type(extra).__name__}"
        )
    allowed = {"max_bytes", "max_latency"}
    unknown = set(extra) - allowed
    if "max_messages" in unknown:
        raise ConfigurationError(
            "batch_settings_kwargs must not set max_messages; use max_batch_size"
        )
    if unknown:
        raise ConfigurationError(
            f"batch_settings_kwargs takes {sorted(allowed)}, got {sorted(unknown)}"
        )
    settings: dict[str, Any] = {"max_messages": max_batch_size}
    if "max_bytes" in extra:
        max_bytes = extra["max_bytes"]
        if not _is_int(max_bytes) or max_bytes < 1:
            raise ConfigurationError(
                f"batch_settings_kwargs['max_bytes'] must be a positive int, got {max_bytes!r}"
            )
        settings["max_bytes"] = max_bytes
    if "max_latency" in extra:
        latency = extra["max_latency"]
        # The relay waits for every message of a batch: a message must not wait forever for
        # others to fill its request.
        if not _is_positive_number(latency):
            raise ConfigurationError(
                "batch_settings_kwargs['max_latency'] must be a positive, finite number of "
                f"seconds, got {latency!r}"
            )
        settings["max_latency"] = float(latency)
    return settings


def _client_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"client_kwargs must be a mapping, got {type(kwargs).__name__}")
    clashing = _OWN_CLIENT_KWARGS & set(kwargs)
    if clashing:
        raise ConfigurationError(
            f"client_kwargs must not contain {sorted(clashing)}: use max_batch_size, "
            "batch_settings_kwargs and enable_message_ordering"
        )
    return dict(kwargs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0
