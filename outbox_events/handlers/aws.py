"""Forwarding events to an AWS SQS queue (needs the ``sqs`` extra: boto3).

Every boto3 call runs in a worker thread, never on the event loop, at most ``max_concurrency``
at a time per handler. ``handle_many`` packs a batch into ``SendMessageBatch`` requests and
reports per-event results, so only the events SQS did not take are retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
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

__all__ = ["SQSForwardHandler"]

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 10  # entries per SendMessageBatch request; SQS accepts no more
MAX_MESSAGE_SIZE = 256 * 1024  # bytes of body and attributes per message and per request
SQS_MAX_MESSAGE_SIZE = 1024 * 1024  # bytes; the largest message SQS accepts
MAX_CONCURRENCY = 8  # boto3 calls in flight at once per handler

KEY_ATTRIBUTE = _format.EVENT_KEY_ATTRIBUTE
HEADERS_ATTRIBUTE = "event_headers"  # all headers as one JSON object (SQS allows 10 attributes)

# Codes (query-protocol and JSON-protocol spellings) that mean "try again later".
RETRYABLE_CODES = frozenset(
    {
        "AWS.SimpleQueueService.RequestThrottled",
        "RequestThrottled",
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
        "KmsThrottled",
        "KMS.ThrottlingException",
    }
)
# Codes that mean "this request will never be accepted": the event is dead-lettered.
PERMANENT_CODES = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "InvalidAddress",
        "InvalidParameterValue",
        "InvalidMessageContents",
        "MessageTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "BatchRequestTooLong",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "MissingParameter",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "UnsupportedOperation",
        "AWS.SimpleQueueService.InvalidBatchEntryId",
        "InvalidBatchEntryId",
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        "BatchEntryIdsNotDistinct",
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        "TooManyEntriesInBatchRequest",
    }
)
# Of those, the ones that may come from a single entry of a batch: the batch is then sent again
# one message at a time, so that one bad event does not take the others down with it.
_ENTRY_CODES = frozenset(
    {
        "InvalidParameterValue",
        "InvalidMessageContents",
        "MessageTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "BatchRequestTooLong",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "MissingParameter",
        "ParamValidationError",
    }
)

_ENTRY_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_GROUP_ID = re.compile(r"[!-~]{1,128}")  # letters, digits and ASCII punctuation
# Characters SQS accepts in bodies and attribute values (XML 1.0 characters).
_INVALID_CHARACTER = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclasses.dataclass(slots=True)
class _Message:
    event: Event
    entry_id: str
    params: dict[str, Any]  # SendMessage parameters besides QueueUrl
    size: int  # bytes SQS counts: body, attribute names, types and values


class SQSForwardHandler(BaseEventHandler):
    """Forwards events to an AWS SQS queue (standard or FIFO).

    A drop-in for fastapi-events' handler of the same name: the positional arguments and
    ``**boto_client_kwargs`` are the same; the keyword-only ones are this library's.

    Each message carries the event id and name (``event_id``, ``event_name``), the ordering key
    (``event_key``), the W3C trace context (``traceparent``, ``tracestate``) and all headers as
    one JSON object (``event_headers``) as String message attributes. On a FIFO queue (the URL
    ends with ``.fifo``) the ``MessageGroupId`` is the event's key and the
    ``MessageDeduplicationId`` its id.

    Args:
        queue_url: The queue's URL.
        region_name: The AWS region of the queue.
        serializer: ``serializer(event) -> str`` builds the message body (default: the
            ``body_format``).
        id_generator: ``id_generator(event) -> str`` gives the ``Id`` of a batch entry (1-80
            letters, digits, ``-`` or ``_``; default: the event id's hex digits).
        max_batch_size: Entries per ``SendMessageBatch`` request, 1 to 10.
        name: The destination's stable name (default: the class's qualified name); give each
            SQS handler of an Outbox its own.
        event_name: fnmatch pattern(s) of the event names sent to this queue (default: all).
        body_format: ``"fastapi-events"`` (``["name", payload]``, as fastapi-events sent) or
            ``"envelope"`` (an object with id, name, payload, key, headers and created_at);
            ignored when a ``serializer`` is given.
        max_message_size: Largest message in bytes (body plus attributes), also the largest
            ``SendMessageBatch`` request; a larger event is dead-lettered.
        default_message_group_id: FIFO ``MessageGroupId`` of events dispatched without a key
            (default: each such event is a group of its own, so they carry no order).
        max_concurrency: boto3 calls in flight at once (each in a worker thread).
        **boto_client_kwargs: Passed to ``boto3.session.Session().client("sqs", ...)``:
            ``endpoint_url``, credentials, ``config``...
    """

    def __init__(
        self,
        queue_url: str,
        region_name: str,
        serializer: Callable[[Event], str] | None = None,
        id_generator: Callable[[Event], str] | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        *,
        name: str | None = None,
        event_name: EventName | Iterable[EventName] = "*",
        body_format: _format.BodyFormat = "fastapi-events",
        max_message_size: int = MAX_MESSAGE_SIZE,
        default_message_group_id: str | None = None,
        max_concurrency: int = MAX_CONCURRENCY,
        **boto_client_kwargs: Any,
    ) -> None:
        super().__init__(name=name, event_name=event_name)
        for label, function in (("serializer", serializer), ("id_generator", id_generator)):
            if function is not None and not callable(function):
                raise ConfigurationError(f"{label} must be callable, got {function!r}")
        _check_int("max_batch_size", max_batch_size, 1, MAX_BATCH_SIZE)
        _check_int("max_message_size", max_message_size, 1, SQS_MAX_MESSAGE_SIZE)
        _check_int("max_concurrency", max_concurrency, 1, None)
        if not isinstance(queue_url, str) or not queue_url:
            raise ConfigurationError(f"queue_url must be a non-empty str, got {queue_url!r}")
        if default_message_group_id is not None and not (
            isinstance(default_message_group_id, str)
            and _GROUP_ID.fullmatch(default_message_group_id)
        ):
            raise ConfigurationError(
                "default_message_group_id must be 1-128 ASCII letters, digits or punctuation, "
                f"got {default_message_group_id!r}"
            )
        self._serializer = _format.serializer_for(serializer, body_format)
        self._id_generator = id_generator
        self._queue_url = queue_url
        self._region_name = region_name
        self._max_batch_size = max_batch_size
        self._max_message_size = max_message_size
        self._default_group_id = default_message_group_id
        self._fifo = queue_url.endswith(".fifo")
        self._boto_client_kwargs = boto_client_kwargs
        self._max_concurrency = max_concurrency
        self._boto3 = _boto("boto3")
        self._client: Any = None
        self._client_lock = threading.Lock()
        # Per event loop: a handler built at import time may serve several loops (tests).
        self._calls: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def __repr__(self) -> str:
        return f"SQSForwardHandler({self._queue_url!r}, name={self.destination_name!r})"

    @property
    def queue_url(self) -> str:
        return self._queue_url

    @property
    def fifo(self) -> bool:
        """Whether the queue is a FIFO queue (its URL ends with ``.fifo``)."""
        return self._fifo

    # -- delivery ----------------------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        """Send one event with ``SendMessage``."""
        message = self._prepare(event, batched=False)
        await self._call("send_message", QueueUrl=self._queue_url, **message.params)

    async def handle_many(self, events: Sequence[Event]) -> None:
        """Send events with ``SendMessageBatch``, several requests at once.

        Raises:
            PartialDeliveryError: naming each event that was not sent, with its reason
                (``PermanentDeliveryError`` for those SQS will never take).
        """
        failures: dict[object, BaseException] = {}
        # Events sharing a key go out one after another (the relay hands over at most one per
        # key, but a direct caller may pass several); a failed one holds back the rest.
        failed_keys: set[str] = set()

        def fail(event: Event, error: BaseException) -> None:
            failures[event.id] = error
            if event.key is not None:
                failed_keys.add(event.key)

        for wave in _waves(events):
            ready: list[_Message] = []
            for event in wave:
                if event.key is not None and event.key in failed_keys:
                    fail(
                        event,
                        DeliveryError(f"held back: an earlier event of key {event.key!r} failed"),
                    )
                    continue
                try:
                    ready.append(self._prepare(event))
                except DeliveryError as exc:
                    fail(event, exc)
            results = await asyncio.gather(*(self._send_batch(b) for b in self._batches(ready)))
            for result in results:
                for message, error in result:
                    fail(message.event, error)
        if failures:
            raise PartialDeliveryError(failures)

    async def aclose(self) -> None:
        """Close the boto3 client (a later delivery opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # -- fastapi-events' overridable helpers ----------------------------------------------------

    def format_message(self, event: Event) -> str:
        """The message body of ``event``."""
        return self._serializer(event)

    def generate_id(self, event: Event) -> str:
        """The ``Id`` of ``event``'s entry in a ``SendMessageBatch`` request."""
        return self._id_generator(event) if self._id_generator else event.id.hex

    def message_params(self, event: Event) -> dict[str, Any]:
        """The ``SendMessage`` parameters for ``event`` besides ``QueueUrl``.

        Override to add parameters (``DelaySeconds``, ``MessageSystemAttributes``...) or
        attributes (SQS allows 10 per message; this handler uses up to 6).
        """
        attributes = _format.event_attributes(event)
        if event.headers:
            attributes[HEADERS_ATTRIBUTE] = json.dumps(
                dict(event.headers), separators=(",", ":"), sort_keys=True
            )
        params: dict[str, Any] = {
            "MessageBody": self.format_message(event),
            "MessageAttributes": {
                name: {"DataType": "String", "StringValue": value}
                for name, value in attributes.items()
            },
        }
        if self._fifo:
            params["MessageGroupId"] = self._group_id(event)
            params["MessageDeduplicationId"] = str(event.id)
        return params

    # -- internals ---------------------------------------------------------------------------

    def _group_id(self, event: Event) -> str:
        if event.key is None:
            return self._default_group_id or str(event.id)
        if _GROUP_ID.fullmatch(event.key):
            return event.key
        # Not a valid group id as it is (too long, spaces, non-ASCII): a stable digest keeps
        # the events of the key in one group.
        return "sha256-" + hashlib.sha256(event.key.encode("utf-8")).hexdigest()

    def _prepare(self, event: Event, *, batched: bool = True) -> _Message:
        """The message for ``event``, checked against SQS's rules and the size limit."""
        try:
            params = self.message_params(event)
            entry_id = self.generate_id(event) if batched else ""
        except DeliveryError:
            raise
        except Exception as exc:
            raise DeliveryError(
                f"building the SQS message of event {event.id} failed: "
                f"{type(exc).__qualname__}: {exc}"
            ) from exc
        body = params.get("MessageBody")
        if not isinstance(body, str) or not body:
            raise PermanentDeliveryError(
                f"the SQS message body of event {event.id} must be a non-empty str, "
                f"got {type(body).__name__} {body!r:.80}"
            )
        if batched and not (isinstance(entry_id, str) and _ENTRY_ID.fullmatch(entry_id)):
            raise PermanentDeliveryError(
                f"batch entry id {entry_id!r} of event {event.id} is not 1-80 letters, digits, "
                "'-' or '_'; fix the id_generator"
            )
        size = _size_of(body, event, "body")
        for attribute, value in params.get("MessageAttributes", {}).items():
            size += len(attribute.encode("utf-8")) + len(str(value.get("DataType", "")))
            text = value.get("StringValue")
            if isinstance(text, str):
                size += _size_of(text, event, f"attribute {attribute!r}")
            elif isinstance(value.get("BinaryValue"), bytes):
                size += len(value["BinaryValue"])
        if size > self._max_message_size:
            raise PermanentDeliveryError(
                f"the SQS message of event {event.id} is {size} bytes (body and attributes), "
                f"over the limit of {self._max_message_size} bytes (max_message_size); send a "
                "reference to the data instead"
            )
        return _Message(event, entry_id, params, size)

    def _batches(self, messages: Sequence[_Message]) -> list[list[_Message]]:
        """Requests of at most ``max_batch_size`` entries and ``max_message_size`` bytes,
        with distinct entry ids."""
        batches: list[list[_Message]] = []
        batch: list[_Message] = []
        size = 0
        ids: set[str] = set()
        for message in messages:
            if batch and (
                len(batch) == self._max_batch_size
                or size + message.size > self._max_message_size
                or message.entry_id in ids
            ):
                batches.append(batch)
                batch, size, ids = [], 0, set()
            batch.append(message)
            size += message.size
            ids.add(message.entry_id)
        if batch:
            batches.append(batch)
        return batches

    async def _send_batch(self, batch: list[_Message]) -> list[tuple[_Message, BaseException]]:
        """Send one request; return the messages that were not sent, with the reason."""
        entries = [{"Id": m.entry_id, **m.params} for m in batch]
        try:
            response = await self._call(
                "send_message_batch", QueueUrl=self._queue_url, Entries=entries
            )
        except PermanentDeliveryError as exc:
            code = _code_of(exc.__cause__)
            if len(batch) > 1 and code in _ENTRY_CODES:
                logger.info(
                    "SQS rejected a batch (%s); sending its %d messages one by one",
                    code,
                    len(batch),
                    extra={"action": "sqs_batch_split", "queue_url": self._queue_url},
                )
                return await self._send_each(batch)
            return [(message, exc) for message in batch]
        except DeliveryError as exc:
            return [(message, exc) for message in batch]
        by_id = {m.entry_id: m for m in batch}
        unsent: list[tuple[_Message, BaseException]] = []
        for failed in response.get("Failed", ()):
            message = by_id.pop(failed.get("Id"), None)
            if message is not None:
                unsent.append((message, _entry_error(failed)))
        for succeeded in response.get("Successful", ()):
            by_id.pop(succeeded.get("Id"), None)
        unsent.extend(  # neither sent nor failed: never seen in practice; retry to be safe
            (message, DeliveryError("SQS reported no result for this message"))
            for message in by_id.values()
        )
        return unsent

    async def _send_each(self, batch: list[_Message]) -> list[tuple[_Message, BaseException]]:
        async def send(message: _Message) -> tuple[_Message, BaseException] | None:
            try:
                await self._call("send_message", QueueUrl=self._queue_url, **message.params)
            except DeliveryError as exc:
                return message, exc
            return None

        results = await asyncio.gather(*(send(message) for message in batch))
        return [result for result in results if result is not None]

    async def _call(self, operation: str, **params: Any) -> Any:
        """Run a client method in a worker thread; boto errors become DeliveryErrors."""
        client = await self._get_client()
        async with self._limiter():
            try:
                return await asyncio.to_thread(getattr(client, operation), **params)
            except Exception as exc:
                raise _translate(exc, operation) from exc

    def _limiter(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._calls is None or self._calls[0] is not loop:
            self._calls = (loop, asyncio.Semaphore(self._max_concurrency))
        return self._calls[1]

    async def _get_client(self) -> Any:
        """The boto3 client, created on first use (in a worker thread: it reads files)."""
        return self._client or await asyncio.to_thread(self._get_client_in_thread)

    def _get_client_in_thread(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        config = _boto("botocore.config").Config
        options = dict(self._boto_client_kwargs)
        pool = config(max_pool_connections=self._max_concurrency)
        options["config"] = pool.merge(options["config"]) if options.get("config") else pool
        # A Session of its own: creating clients from boto3's default session is not
        # thread-safe.
        session = self._boto3.session.Session()
        return session.client("sqs", region_name=self._region_name, **options)


def _boto(module: str) -> Any:
    """boto3 or a botocore module (imported on first use; they ship no type hints)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            "SQSForwardHandler needs boto3: pip install 'outbox-events[sqs]'"
        ) from exc


def _check_int(label: str, value: object, low: int, high: int | None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(f"{label} must be an int {bounds}, got {value!r}")


def _size_of(text: str, event: Event, what: str) -> int:
    """UTF-8 length of ``text``; a character SQS refuses makes the event permanently fail."""
    match = _INVALID_CHARACTER.search(text)
    if match is not None:
        raise PermanentDeliveryError(
            f"the SQS message {what} of event {event.id} holds a character SQS does not accept "
            f"(U+{ord(match.group()):04X} at position {match.start()})"
        )
    return len(text.encode("utf-8"))


def _waves(events: Sequence[Event]) -> list[list[Event]]:
    """``events`` split so that each wave holds at most one event per ordering key."""
    waves: list[list[Event]] = []
    seen: dict[str, int] = {}
    for event in events:
        index = 0
        if event.key is not None:
            index = seen[event.key] = seen.get(event.key, -1) + 1
        if index == len(waves):
            waves.append([])
        waves[index].append(event)
    return waves


def _is_permanent(code: str, status: int | None, sender_fault: bool | None = None) -> bool:
    if code in RETRYABLE_CODES or (status is not None and (status >= 500 or status == 429)):
        return False
    return code in PERMANENT_CODES or bool(sender_fault)


def _entry_error(failed: dict[str, Any]) -> DeliveryError:
    """The error for an entry in a ``SendMessageBatch`` response's ``Failed`` list."""
    code = str(failed.get("Code", ""))
    reason = f"SQS rejected the message: {code}: {failed.get('Message', '')}"
    if _is_permanent(code, None, failed.get("SenderFault")):
        return PermanentDeliveryError(reason)
    return DeliveryError(reason)


def _code_of(error: BaseException | None) -> str:
    """The SQS error code behind a translated error ("ParamValidationError" when boto3
    refused to send the request)."""
    boto = _boto("botocore.exceptions")

    if isinstance(error, boto.ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return type(error).__name__ if error is not None else ""


def _translate(exc: Exception, operation: str) -> DeliveryError:
    """A boto3 / botocore error as this library's error (retried unless permanent)."""
    boto = _boto("botocore.exceptions")

    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = f"SQS {operation} failed: {code}: {error.get('Message', '')}"
        if status is not None:
            reason += f" (HTTP {status})"
        permanent = _is_permanent(code, status)
        return PermanentDeliveryError(reason) if permanent else DeliveryError(reason)
    if isinstance(exc, boto.ParamValidationError):  # the request itself is malformed
        return PermanentDeliveryError(f"SQS {operation} failed: {exc}")
    if isinstance(exc, boto.BotoCoreError):  # connection refused, timeouts, credentials...
        return DeliveryError(f"SQS {operation} failed: {type(exc).__name__}: {exc}")
    return DeliveryError(f"SQS {operation} failed: {type(exc).__qualname__}: {exc}")
