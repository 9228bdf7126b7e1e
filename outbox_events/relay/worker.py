"""The relay loop: claim a batch, deliver it, record the outcome; sleep until woken."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from outbox_events.exceptions import OutboxError, StoreError
from outbox_events.relay.delivery import Outcome, deliver, describe
from outbox_events.store import notifications
from outbox_events.store.store import ClaimedDelivery, DeadLetter, Retry, Row
from outbox_events.store.tables import DELIVERED

if TYPE_CHECKING:
    from outbox_events.outbox import Outbox

logger = logging.getLogger(__name__)

STORE_RETRY_DELAY = 1.0  # seconds, doubled up to STORE_RETRY_MAX while the database is down
STORE_RETRY_MAX = 30.0  # seconds
STOP_TIMEOUT = 30.0  # seconds to finish in-flight batches when stopping
RELEASE_TIMEOUT = 10.0  # seconds to record and release them after that, before abandoning them
CONCURRENCY = 2  # batches in flight at once per relay, while claims come back full
RETRY_WAKE_MARGIN = 0.005  # seconds after a retry falls due that the relay looks for it
PURGE_INTERVAL = 60.0  # seconds between purges of delivered rows past their retention


@dataclasses.dataclass
class DrainResult:
    """What one ``drain()`` (or one batch) did."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retried + self.dead_lettered

    def add(self, other: DrainResult) -> None:
        self.delivered += other.delivered
        self.retried += other.retried
        self.dead_lettered += other.dead_lettered


class Relay:
    """Delivers the outbox's pending rows; runs as a task of the web process (embedded) or as
    the main loop of ``outbox-relay run``.

    One loop claims batches and delivers each in a task of its own: while claims come back
    full it claims the next batch at once, up to ``concurrency`` batches in flight; otherwise
    it waits for a wake-up (on PostgreSQL a listener wakes it when events commit anywhere)
    or the poll interval.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        batch_size: int,
        poll_interval: float,
        lease: float,
        concurrency: int = CONCURRENCY,
        shutdown_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease = timedelta(seconds=lease)
        self.concurrency = concurrency
        self.shutdown_timeout = shutdown_timeout
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[DrainResult]] = set()
        self._stopped: asyncio.Event | None = None
        self._stop_timeout: float | None = None  # stop(timeout=...) for the run being stopped
        self._stop_sent: asyncio.Task[None] | None = None  # the task stop() has cancelled
        self._deliveries: set[asyncio.Future[list[Outcome]]] = set()  # destination groups
        self.listening = False  # a LISTEN connection is open (PostgreSQL)
        self._retry_due: float | None = None  # loop time the earliest scheduled retry is due

    def configure(
        self,
        *,
        concurrency: int | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease: float | None = None,
        shutdown_timeout: float | None = None,
    ) -> None:
        """Override settings (``outbox-relay run`` flags); None keeps the current value."""
        if concurrency is not None:
            self.concurrency = concurrency
        if batch_size is not None:
            self.batch_size = batch_size
        if poll_interval is not None:
            self.poll_interval = poll_interval
        if lease is not None:
            self.lease = timedelta(seconds=lease)
        if shutdown_timeout is not None:
            self.shutdown_timeout = shutdown_timeout

    # -- lifecycle -------------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        """Run the loop as a task of the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="outbox-events-relay"
            )
            self._task.add_done_callback(_retrieve_failure)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def request_stop(self) -> None:
        """Stop claiming; the loop ends after its batches in flight (idempotent; safe to call
        from a signal handler)."""
        self._stopping = True
        self._wakeup.set()
        if self._stopped is not None:
            self._stopped.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the task started by ``start()`` gracefully: claiming stops, in-flight batches
        get ``timeout`` (default ``shutdown_timeout``) seconds to finish, and what is still
        unfinished then is released for another relay."""
        task = self._task
        if task is None:
            return
        if task is not self._stop_sent:  # a second stop() waits for the first one
            self._stop_sent = task
            self._stop_timeout = timeout
            task.cancel()  # run() turns this into the graceful stop
        await asyncio.wait({task})
        if self._task is task:
            self._task = None

    async def run(self) -> None:
        """Deliver until stopped. Cancelling this coroutine is a graceful stop: claiming
        stops, in-flight batches get ``shutdown_timeout`` seconds to finish, and what is still
        unfinished then is released for another relay.

        Raises:
            OutboxError: a task of the relay (a delivery loop, the notification listener,
                the retention purge) died; the others were stopped gracefully first.
        """
        self._stopped = None
        main = asyncio.create_task(self._main(), name="outbox-events-relay-main")
        try:
            await asyncio.shield(main)
        except asyncio.CancelledError:
            if not main.done():
                self.request_stop()
                timeout, self._stop_timeout = self._stop_timeout, None
                await self._finish(main, self.shutdown_timeout if timeout is None else timeout)
                _retrieve_failure(main)
            raise
        finally:
            self._stopping = False

    async def _finish(self, running: asyncio.Future[Any], timeout: float) -> None:
        """Wait for ``running`` to end once a stop was requested. Past ``timeout``, interrupt
        the deliveries still running: their batches record what finished and release the
        rest. Past ``RELEASE_TIMEOUT`` more (the database does not answer), abandon the
        batches; their rows come back when their lease runs out."""
        done, _ = await asyncio.wait({running}, timeout=timeout)
        if done:
            return
        logger.warning(
            "in-flight deliveries did not finish within %.1f s; releasing them",
            timeout,
            extra={"action": "relay_stop_timeout"},
        )
        for delivery in list(self._deliveries):
            delivery.cancel()
        done, _ = await asyncio.wait({running}, timeout=RELEASE_TIMEOUT)
        if done:
            return
        logger.error(
            "could not release in-flight deliveries within %.1f s; they become claimable "
            "again when their lease runs out",
            RELEASE_TIMEOUT,
            extra={"action": "relay_stop_abandoned"},
        )
        abandoned = [running, *self._batches]
        for task in abandoned:
            task.cancel()
        await asyncio.wait(abandoned, timeout=RELEASE_TIMEOUT)  # a handler may ignore cancel

    async def _main(self) -> None:
        """The delivery loop and the side tasks, watched: a task that dies stops the relay
        (the loop finishes its batches) and its error is raised."""
        delivering = asyncio.create_task(self._loop(), name="outbox-events-relay-loop")
        side: list[asyncio.Task[None]] = []
        if notifications.supported(self.outbox.engine):
            side.append(asyncio.create_task(self._listen(), name="outbox-events-listener"))
        if self.outbox.retention is not None:
            purge = self._purge_delivered(self.outbox.retention)
            side.append(asyncio.create_task(purge, name="outbox-events-purge"))
        failure: tuple[str, BaseException | None] | None = None
        pending: set[asyncio.Task[None]] = {delivering, *side}
        try:
            while not delivering.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = None if task.cancelled() else task.exception()
                    if error is None and (task is delivering or self._stopping):
                        continue  # the loop ends only when stopping; side tasks likewise
                    name = task.get_name()
                    logger.error(
                        "relay task %s died (%s); stopping the relay",
                        name,
                        "ended" if error is None else describe(error),
                        exc_info=error,
                        extra={"action": "relay_task_died", "task": name},
                    )
                    failure = failure or (name, error)
                    self.request_stop()
        finally:
            for task in [delivering, *side]:
                task.cancel()  # only side tasks are still running, unless we were cancelled
            await asyncio.gather(delivering, *side, return_exceptions=True)
        if failure is not None:
            name, error = failure
            raise OutboxError(
                f"the relay stopped because its task {name} died: "
                f"{'it ended' if error is None else describe(error)}"
            ) from error

    async def _loop(self) -> None:
        """Batches back to back while they come back full; then wait for the first of a
        wake-up, the poll interval or stop. Errors back off and retry."""
        failures = 0
        unavailable = False
        while not self._stopping:
            try:
                _, last_claimed = await self._back_to_back(stop_below=self.batch_size)
            except Exception as exc:
                failures += 1
                delay = min(STORE_RETRY_DELAY * 2 ** (failures - 1), STORE_RETRY_MAX)
                unavailable = isinstance(exc, StoreError)
                if unavailable:
                    logger.warning(
                        "database unavailable (%s); retrying in %.1f s",
                        exc,
                        delay,
                        extra={"action": "store_unavailable"},
                    )
                else:
                    logger.exception(
                        "a batch failed unexpectedly; retrying in %.1f s",
                        delay,
                        extra={"action": "batch_failed"},
                    )
                await self._idle(delay, backing_off=True)
                continue
            if unavailable:
                logger.info("database reachable again", extra={"action": "store_available"})
            failures, unavailable = 0, False
            if last_claimed < self.batch_size:
                await self._idle(self.poll_interval)

    async def _idle(self, seconds: float, *, backing_off: bool = False) -> None:
        """Wait for the first of a wake-up, ``seconds``, stop, or (unless ``backing_off``
        after an error) the moment the earliest retry this relay scheduled falls due (the
        adaptive part of polling)."""
        if self._stopping:
            return
        if self._retry_due is not None and not backing_off:
            seconds = min(seconds, max(self._retry_due - asyncio.get_running_loop().time(), 0.0))
        if not self._wakeup.is_set():
            timer = asyncio.get_running_loop().call_later(seconds, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()
        self._wakeup.clear()

    async def _listen(self) -> None:
        """Keep a LISTEN connection open (reconnecting with backoff) and wake the loop on
        each notification. Polling delivers while it is down, so a failure to listen is
        retried, never fatal."""
        store = self.outbox.store
        failures = 0
        interrupted = False
        while not self._stopping:
            try:
                async with notifications.listening(store.engine, store.channel, self.wake) as lost:
                    if interrupted:
                        logger.info(
                            "listening for notifications again",
                            extra={"action": "listener_available"},
                        )
                    failures, interrupted = 0, False
                    self.listening = True
                    self.wake()  # catch up on what committed while we were not listening
                    try:
                        await lost
                    finally:
                        self.listening = False
                interrupted = True
                logger.warning(
                    "notification connection lost; reconnecting", extra={"action": "listener_lost"}
                )
            except Exception as exc:  # StoreError, or a driver error notifications let through
                failures += 1
                interrupted = True
                delay = min(STORE_RETRY_DELAY * 2 ** (failures - 1), STORE_RETRY_MAX)
                logger.warning(
                    "cannot listen for notifications (%s); retrying in %.1f s",
                    exc if isinstance(exc, StoreError) else describe(exc),
                    delay,
                    extra={"action": "listener_unavailable"},
                )
                await asyncio.sleep(delay)

    async def _purge_delivered(self, retention: float) -> None:
        """Delete delivered rows older than the retention period, now and then."""
        while not self._stopping:
            try:
                cutoff = self.outbox.clock() - timedelta(seconds=retention)
            except OverflowError:  # a retention longer than the calendar: nothing is that old
                await self._idle_for_purge()
                continue
            try:
                purged = await self.outbox.store.purge(states=[DELIVERED], finished_before=cutoff)
            except StoreError as exc:
                logger.warning(
                    "could not purge delivered rows (%s)", exc, extra={"action": "purge_failed"}
                )
            else:
                if purged:
                    logger.info(
                        "purged %d delivered row(s) past retention",
                        purged,
                        extra={"action": "rows_purged"},
                    )
            await self._idle_for_purge()

    async def _idle_for_purge(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopped_event().wait(), PURGE_INTERVAL)

    def _stopped_event(self) -> asyncio.Event:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        if self._stopping:
            self._stopped.set()
        return self._stopped

    # -- work ------------------------------------------------------------------------------

    async def drain(self) -> DrainResult:
        """Deliver everything deliverable now, including batches this process already claimed;
        return the totals. Cancelling it is a graceful stop, as for ``run()``: the batches in
        flight get ``shutdown_timeout`` seconds to finish, then are released."""
        total = DrainResult()
        try:
            while True:
                result = (await self._back_to_back(stop_below=1))[0]
                total.add(result)
                # Done when a claim made with no batch of ours in flight finds nothing: one made
                # while a batch was delivering misses what that batch unblocks or chains.
                if result.attempted == 0:
                    others = [task for task in self._batches if task is not asyncio.current_task()]
                    if not others:
                        return total
                    await asyncio.wait(others)
        except asyncio.CancelledError:
            if self._batches:
                everything = asyncio.ensure_future(asyncio.wait(list(self._batches)))
                await self._finish(everything, self.shutdown_timeout)
            raise

    async def run_batch(self) -> DrainResult:
        """Claim one batch, deliver it and record the outcome."""
        claimed, batch = self._start_batch()
        await asyncio.shield(claimed)  # raises when the claim fails
        return await asyncio.shield(batch)

    async def _back_to_back(self, *, stop_below: int) -> tuple[DrainResult, int]:
        """Claim and deliver batches until a claim brings fewer than ``stop_below`` rows (or
        the relay stops); return the totals, once every batch started here is settled, and
        the number of rows the last claim brought.

        While claims come back full, the next batch is claimed as soon as the last claim
        returns, up to ``concurrency`` batches in flight: the database works on a claim while
        this process delivers. A failed claim or settle raises once the other batches in
        flight have finished.
        """
        total = DrainResult()
        in_flight: list[asyncio.Task[DrainResult]] = []  # oldest first
        count = 0
        try:
            while not self._stopping:
                claimed, batch = self._start_batch()
                in_flight.append(batch)
                count = await asyncio.shield(claimed)
                if count < stop_below:
                    break
                if len(in_flight) >= self.concurrency:
                    total.add(await asyncio.shield(in_flight.pop(0)))
            while in_flight:
                total.add(await asyncio.shield(in_flight.pop(0)))
            return total, count
        except Exception:
            # Let the other batches in flight finish before the error backs the loop off.
            for task in in_flight:
                await asyncio.wait({task})
                if not task.cancelled() and (error := task.exception()) is not None:
                    logger.warning(
                        "a batch in flight failed too: %s",
                        describe(error),
                        extra={"action": "batch_failed"},
                    )
            raise

    def _start_batch(self) -> tuple[asyncio.Future[int], asyncio.Task[DrainResult]]:
        """Start claiming and delivering one batch in a task of its own; the future gives the
        number of rows claimed as soon as the claim returns."""
        claimed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        claimed.add_done_callback(_retrieve_failure)
        batch = asyncio.ensure_future(self._run_batch(claimed))
        self._batches.add(batch)
        batch.add_done_callback(self._batches.discard)
        metrics = self.outbox.metrics
        if metrics is not None:
            metrics.in_flight.inc()
            batch.add_done_callback(lambda _: metrics.in_flight.dec())
        return claimed, batch

    async def _run_batch(self, claimed: asyncio.Future[int]) -> DrainResult:
        outbox = self.outbox
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:  # whatever fails before the claim returns goes to whoever waits for the claim
            destinations = outbox.destinations
            if not destinations:
                claimed.set_result(0)
                return DrainResult()
            now = outbox.clock()
            claim = await outbox.store.claim(
                destinations=list(destinations),
                limit=self.batch_size,
                now=now,
                lease_until=now + self.lease,
            )
        except asyncio.CancelledError:
            # This batch was cancelled (a stop past its timeouts, or a cancelled drain()):
            # whoever waits for the claim gets an error and backs off, instead of ending.
            claimed.set_exception(StoreError("the claim was interrupted before it returned"))
            raise
        except Exception as exc:
            claimed.set_exception(exc)
            return DrainResult()
        claimed.set_result(len(claim.deliveries))
        if outbox.metrics is not None:
            outbox.metrics.claim.observe(loop.time() - started)
            outbox.metrics.claimed.inc(len(claim.deliveries))
        if self._retry_due is not None and self._retry_due <= started:
            self._retry_due = None  # this claim looked for the retry that fell due
        if not claim.deliveries:
            return DrainResult()
        by_destination: defaultdict[str, list[ClaimedDelivery]] = defaultdict(list)
        for delivery in claim.deliveries:
            by_destination[delivery.destination].append(delivery)
        # One task per destination, so that a stop past the shutdown timeout can interrupt
        # the destinations still delivering and record what the others finished.
        groups = {
            asyncio.ensure_future(
                deliver(outbox, destinations[name], deliveries, claim.token)
            ): deliveries
            for name, deliveries in by_destination.items()
        }
        self._deliveries.update(groups)
        try:
            await asyncio.wait(groups)
        except asyncio.CancelledError:  # abandoned: nothing is recorded, the lease runs out
            for group in groups:
                group.cancel()
            raise
        finally:
            self._deliveries.difference_update(groups)
        outcomes: list[Outcome] = []
        interrupted = False
        for group, deliveries in groups.items():
            if group.cancelled():
                interrupted = True
            elif (error := group.exception()) is not None:
                logger.error(
                    "delivering to %s failed unexpectedly",
                    deliveries[0].destination,
                    exc_info=error,
                    extra={"action": "delivery_crashed", "destination": deliveries[0].destination},
                )
                outcomes.extend(Outcome(delivery, error) for delivery in deliveries)
            else:
                outcomes.extend(group.result())
        result = await self._settle(claim.token, outcomes)
        if interrupted:
            await asyncio.shield(outbox.store.release(claim.token, now=outbox.clock()))
        return result

    async def _settle(self, token: uuid.UUID, outcomes: list[Outcome]) -> DrainResult:
        if not outcomes:
            return DrainResult()
        outbox = self.outbox
        now = outbox.clock()
        loop_now = asyncio.get_running_loop().time()
        delivered: list[int] = []
        retries: list[Retry] = []
        dead: list[DeadLetter] = []
        chained: dict[int, list[Row]] = {}
        retried_to: list[str] = []  # destinations, for the metrics
        dead_to: list[str] = []
        delivered_count = 0
        settled_already = False  # recorded in a handler's own transaction (delivery_session)
        unblocked = False  # a keyed row finished: the next event of its key may go now
        debug = logger.isEnabledFor(logging.DEBUG)
        for outcome in outcomes:
            delivery, error = outcome.delivery, outcome.error
            if error is None:
                unblocked = unblocked or delivery.key is not None
                delivered_count += 1
                if outcome.settled:
                    settled_already = True
                else:
                    delivered.append(delivery.id)
                if outcome.chained:
                    chained[delivery.id] = outbox.rows_for(outcome.chained)
                if debug:
                    logger.debug(
                        "delivered event %s to %s",
                        delivery.event_id,
                        delivery.destination,
                        extra={
                            "action": "event_delivered",
                            "event_id": str(delivery.event_id),
                            "destination": delivery.destination,
                        },
                    )
            elif outcome.permanent or outbox.retry.gives_up_after(delivery.attempts):
                unblocked = unblocked or delivery.key is not None
                dead.append(DeadLetter(delivery.id, describe(error)))
                dead_to.append(delivery.destination)
                logger.error(
                    "dead-lettered event %s for %s after %d attempt(s): %s",
                    delivery.event_id,
                    delivery.destination,
                    delivery.attempts,
                    describe(error),
                    extra={
                        "action": "event_dead_lettered",
                        "event_id": str(delivery.event_id),
                        "destination": delivery.destination,
                    },
                )
            else:
                delay = outbox.retry.delay(delivery.attempts)
                retries.append(Retry(delivery.id, now + timedelta(seconds=delay), describe(error)))
                retried_to.append(delivery.destination)
                logger.warning(
                    "delivery of event %s to %s failed (attempt %d), retrying in %.1f s: %s",
                    delivery.event_id,
                    delivery.destination,
                    delivery.attempts,
                    delay,
                    describe(error),
                    extra={
                        "action": "delivery_failed",
                        "event_id": str(delivery.event_id),
                        "destination": delivery.destination,
                    },
                )
        if delivered or retries or dead:
            await asyncio.shield(
                outbox.store.settle(
                    token,
                    delivered=delivered,
                    retries=retries,
                    dead=dead,
                    chained=chained,
                    now=now,
                )
            )
        if outbox.metrics is not None:
            outbox.metrics.settled(
                outbox.clock(),
                (
                    (o.delivery.destination, o.delivery.created_at)
                    for o in outcomes
                    if o.error is None
                ),
                retried_to,
                dead_to,
            )
        if retries:  # the same instant as `now`, on the loop's clock, plus a little margin
            due = (
                loop_now
                + RETRY_WAKE_MARGIN
                + min((r.available_at - now).total_seconds() for r in retries)
            )
            self._retry_due = due if self._retry_due is None else min(self._retry_due, due)
        if chained or unblocked or settled_already:
            self.wake()  # claim again at once instead of waiting for the poll interval
        return DrainResult(delivered_count, len(retries), len(dead))


def _retrieve_failure(task: asyncio.Future[Any]) -> None:
    """Mark a relay task's error as seen: it was logged when the task died."""
    if not task.cancelled():
        task.exception()
