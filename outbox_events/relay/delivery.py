"""Handing claimed deliveries to their destinations and judging the outcome."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from outbox_events import _json, _tracing, unit_of_work
from outbox_events.exceptions import DeliveryError, PartialDeliveryError, PermanentDeliveryError
from outbox_events.handlers.base import Destination
from outbox_events.relay.transaction import DeliveryTransaction
from outbox_events.store.store import ClaimedDelivery
from outbox_events.typing import Event

if TYPE_CHECKING:
    from outbox_events.outbox import Outbox

logger = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000  # characters of an error kept in last_error


@dataclasses.dataclass(slots=True)
class Outcome:
    """What became of one delivery."""

    delivery: ClaimedDelivery
    error: BaseException | None = None
    permanent: bool = False
    chained: list[unit_of_work.PendingEvent] = dataclasses.field(default_factory=list)
    settled: bool = False  # recorded already, in the handler's own transaction


def describe(error: BaseException) -> str:
    """``"ExcType: message"`` (or just the type when the message is empty), truncated."""
    message = str(error)
    text = f"{type(error).__qualname__}: {message}" if message else type(error).__qualname__
    return text[:MAX_ERROR_LENGTH]


def to_event(delivery: ClaimedDelivery) -> Event:
    """The Event for a claimed row; raises ValueError when its stored JSON is unreadable."""
    try:
        payload = _json.decode(delivery.payload)
        headers = _decode_mapping(delivery.headers, "headers")
        trace_context = _decode_mapping(delivery.trace_context, "trace context")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"stored event cannot be decoded: {exc}") from exc
    return Event(
        name=delivery.name,
        payload=payload,
        id=delivery.event_id,
        key=delivery.key,
        headers=headers,
        created_at=delivery.created_at,
        attempt=delivery.attempts,
        destination=delivery.destination,
        trace_context=trace_context,
    )


def _decode_mapping(text: str | None, what: str) -> dict[str, str] | None:
    if text is None:
        return None
    value = _json.decode(text)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


async def deliver(
    outbox: Outbox,
    destination: Destination,
    deliveries: Sequence[ClaimedDelivery],
    token: uuid.UUID,
) -> list[Outcome]:
    """Deliver ``deliveries`` (all for ``destination``, leased under ``token``) and report
    each one's outcome."""
    outcomes: list[Outcome] = []
    ready: list[tuple[Outcome, Event]] = []
    for delivery in deliveries:
        outcome = Outcome(delivery)
        outcomes.append(outcome)
        try:
            ready.append((outcome, to_event(delivery)))
        except ValueError as exc:
            outcome.error, outcome.permanent = exc, True
    tracer = _tracing.delivery_tracer(outbox.tracer_provider) if ready else None
    if ready and destination.batched:
        await _deliver_batch(outbox, destination, ready, tracer)
    elif ready:
        await _deliver_each(outbox, destination, collections.deque(ready), tracer, token)
    return outcomes


async def _deliver_each(
    outbox: Outbox,
    destination: Destination,
    waiting: collections.deque[tuple[Outcome, Event]],
    tracer: Any,
    token: uuid.UUID,
) -> None:
    """Deliver ``waiting`` event by event, side by side as far as the handler waits.

    A worker task delivers events one after the other. Each time the workers started so far
    are all waiting (on I/O, a thread, a timer), another one starts on the next event. Handlers
    that wait still overlap as if each event had a task of its own, while handlers that never
    wait cost one task per batch instead of one per event.
    """

    async def worker() -> None:
        while waiting:
            outcome, event = waiting.popleft()
            await _deliver_one(outbox, destination, outcome, event, tracer, token)

    workers: list[asyncio.Task[None]] = []
    try:
        while waiting:
            workers.append(asyncio.ensure_future(worker()))
            await asyncio.sleep(0)  # the new worker runs until it waits or runs out of events
        await asyncio.gather(*workers)
    finally:
        running = [task for task in workers if not task.done()]
        for task in running:
            task.cancel()  # this delivery itself was cancelled (or a worker failed)
        if running:
            await asyncio.wait(running)  # their clean-up ends before the batch settles


async def _deliver_one(
    outbox: Outbox,
    destination: Destination,
    outcome: Outcome,
    event: Event,
    tracer: Any,
    token: uuid.UUID,
) -> None:
    unit = unit_of_work.UnitOfWork(outbox, (outcome.delivery, token))
    try:
        with unit_of_work.bound(unit):
            try:
                if tracer is None:
                    await destination.handle(event)
                else:
                    with _tracing.delivery_span(tracer, destination.name, (event,)):
                        await destination.handle(event)
            except Exception as exc:
                _record_failure(outcome, exc)
                return
        outcome.chained = unit.take()
        if unit.transaction is not None:  # the handler wrote through delivery_session()
            await _commit_own_transaction(unit.transaction, outcome)
    finally:
        unit.delivery = None  # delivery_session() from a task the handler left behind: refused
        if unit.transaction is not None:
            await unit.transaction.close()


async def _commit_own_transaction(transaction: DeliveryTransaction, outcome: Outcome) -> None:
    try:
        settled = await transaction.commit(outcome.chained)
    except Exception as exc:  # nothing was committed: deliver it again
        _record_failure(outcome, exc)
        return
    outcome.chained = []  # written, or rolled back with the handler's writes
    if settled:
        outcome.settled = True
    else:
        _record_failure(
            outcome,
            DeliveryError(
                "the lease on this event ran out before the handler's transaction committed; "
                "its writes were rolled back, and the relay that holds the event now delivers it"
            ),
        )


async def _deliver_batch(
    outbox: Outbox, destination: Destination, ready: list[tuple[Outcome, Event]], tracer: Any
) -> None:
    unit = unit_of_work.UnitOfWork(outbox)
    events = [event for _, event in ready]
    with unit_of_work.bound(unit):
        try:
            with _tracing.delivery_span(tracer, destination.name, events):
                await destination.handle_many(events)
        except PartialDeliveryError as exc:
            for outcome, event in ready:
                failure = exc.failures.get(event.id, exc.failures.get(str(event.id)))
                if failure is not None:
                    _record_failure(outcome, failure)
        except Exception as exc:
            for outcome, _ in ready:
                _record_failure(outcome, exc)
            return
    # The events the handler dispatched belong to no single event of the batch: they commit
    # with the first delivered one (at-least-once), and are dropped only when all failed.
    delivered = next((outcome for outcome, _ in ready if outcome.error is None), None)
    if delivered is not None:
        delivered.chained = unit.take()


def _record_failure(outcome: Outcome, error: BaseException) -> None:
    outcome.error = error
    outcome.permanent = isinstance(error, PermanentDeliveryError)
