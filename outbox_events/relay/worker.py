"""The relay loop: claim a batch, deliver it, record the outcome; sleep until woken."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING

from outbox_events.exceptions import StoreError
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
CONCURRENCY = 1  # batches in flight at once per relay
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

    ``concurrency`` loops claim and deliver side by side, each one batch at a time; on
    PostgreSQL a listener wakes them when events commit anywhere, and every loop also polls.
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
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="outbox-events-relay"
            )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def request_stop(self) -> None:
        """Stop claiming; the loops end after their current batch (idempotent; safe to call
        from a signal handler)."""
        self._stopping = True
        self._wakeup.set()
        if self._stopped is not None:
            self._stopped.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the task started by ``start()`` gracefully (see ``run``)."""
        self.request_stop()
        task, self._task = self._task, None
        if task is not None:
            await self._finish(task, self.shutdown_timeout if timeout is None else timeout)

    async def run(self) -> None:
        """Deliver until stopped. Cancelling this coroutine is a graceful stop: claiming
        stops, in-flight batches get ``shutdown_timeout`` seconds to finish, and what is still
        unfinished then is released for another relay."""
        self._stopping = False
        self._stopped = None
        main = asyncio.ensure_future(self._main())
        try:
            await asyncio.shield(main)
        except asyncio.CancelledError:
            self.request_stop()
            await self._finish(main, self.shutdown_timeout)
            raise

    async def _finish(self, main: asyncio.Future[None], timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(main), timeout)
            return
        except asyncio.TimeoutError:
            logger.warning(
                "in-flight deliveries did not finish within %.1f s; releasing them",
                timeout,
                extra={"action": "relay_stop_timeout"},
            )
        for batch in list(self._batches):
            batch.cancel()  # each releases its unsettled rows
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main

    async def _main(self) -> None:
        side_tasks = []
        if notifications.supported(self.outbox.engine):
            side_tasks.append(asyncio.ensure_future(self._listen()))
        if self.outbox.retention is not None:
            side_tasks.append(asyncio.ensure_future(self._purge_delivered(self.outbox.retention)))
        try:
            await asyncio.gather(*(self._loop() for _ in range(self.concurrency)))
        finally:
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, return_exceptions=True)

    async def _loop(self) -> None:
        """Batches back to back while they come back full; then wait for the first of a
        wake-up, the poll interval or stop. Database errors back off and retry."""
        failures = 0
        while not self._stopping:
            try:
                result = await self.run_batch()
            except StoreError as exc:
                failures += 1
                delay = min(STORE_RETRY_DELAY * 2 ** (failures - 1), STORE_RETRY_MAX)
                logger.warning(
                    "database unavailable (%s); retrying in %.1f s",
                    exc,
                    delay,
                    extra={"action": "store_unavailable"},
                )
                await self._idle(delay)
                continue
            if failures:
                logger.info("database reachable again", extra={"action": "store_available"})
                failures = 0
            if result.attempted < self.batch_size:
                await self._idle(self.poll_interval)

    async def _idle(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()

    async def _listen(self) -> None:
        """Keep a LISTEN connection open (reconnecting with backoff) and wake the loops on
        each notification."""
        store = self.outbox.store
        failures = 0
        while not self._stopping:
            try:
                async with notifications.listening(store.engine, store.channel, self.wake) as lost:
                    failures = 0
                    self.wake()  # catch up on what committed while we were not listening
                    await lost
                logger.warning(
                    "notification connection lost; reconnecting", extra={"action": "listener_lost"}
                )
            except StoreError as exc:
                failures += 1
                delay = min(STORE_RETRY_DELAY * 2 ** (failures - 1), STORE_RETRY_MAX)
                logger.warning(
                    "cannot listen for notifications (%s); retrying in %.1f s",
                    exc,
                    delay,
                    extra={"action": "listener_unavailable"},
                )
                await asyncio.sleep(delay)

    async def _purge_delivered(self, retention: float) -> None:
        """Delete delivered rows older than the retention period, now and then."""
        while not self._stopping:
            cutoff = self.outbox.clock() - timedelta(seconds=retention)
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
        return the totals."""
        total = DrainResult()
        while True:
            result = await self.run_batch()
            total.add(result)
            if result.attempted == 0:
                others = [task for task in self._batches if task is not asyncio.current_task()]
                if not others:
                    return total
                await asyncio.wait(others)

    async def run_batch(self) -> DrainResult:
        """Claim one batch, deliver it and record the outcome."""
        task = asyncio.ensure_future(self._run_batch())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        return await asyncio.shield(task)

    async def _run_batch(self) -> DrainResult:
        outbox = self.outbox
        destinations = outbox.destinations
        if not destinations:
            return DrainResult()
        now = outbox.clock()
        claim = await outbox.store.claim(
            destinations=list(destinations),
            limit=self.batch_size,
            now=now,
            lease_until=now + self.lease,
        )
        if not claim.deliveries:
            return DrainResult()
        by_destination: defaultdict[str, list[ClaimedDelivery]] = defaultdict(list)
        for delivery in claim.deliveries:
            by_destination[delivery.destination].append(delivery)
        try:
            groups = await asyncio.gather(
                *(
                    deliver(outbox, destinations[name], deliveries)
                    for name, deliveries in by_destination.items()
                )
            )
        except asyncio.CancelledError:
            await asyncio.shield(outbox.store.release(claim.token, now=outbox.clock()))
            raise
        return await self._settle(claim.token, [o for group in groups for o in group])

    async def _settle(self, token: uuid.UUID, outcomes: list[Outcome]) -> DrainResult:
        outbox = self.outbox
        now = outbox.clock()
        delivered: list[int] = []
        retries: list[Retry] = []
        dead: list[DeadLetter] = []
        chained: dict[int, list[Row]] = {}
        for outcome in outcomes:
            delivery, error = outcome.delivery, outcome.error
            if error is None:
                delivered.append(delivery.id)
                if outcome.chained:
                    chained[delivery.id] = outbox.rows_for(outcome.chained)
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
                dead.append(DeadLetter(delivery.id, describe(error)))
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
        if chained:
            self.wake()
        return DrainResult(len(delivered), len(retries), len(dead))
