"""The ``Outbox``: the one configuration object shared by the web app and the relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from outbox_events import metrics as relay_metrics
from outbox_events import session as session_hooks
from outbox_events import unit_of_work
from outbox_events.exceptions import ConfigurationError
from outbox_events.handlers.base import BaseEventHandler, Destination
from outbox_events.metrics import RelayMetrics
from outbox_events.relay.worker import CONCURRENCY, DrainResult, Relay
from outbox_events.retry import RetryPolicy
from outbox_events.store import engine as engines
from outbox_events.store import migrate as migrations
from outbox_events.store.store import OutboxStore, Row
from outbox_events.store.tables import DEFAULT_TABLE, PENDING, outbox_table
from outbox_events.unit_of_work import PendingEvent, UnitOfWork

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

RelayMode = Literal["embedded", "external"]
MAX_PAYLOAD_SIZE = 256 * 1024  # bytes of serialised JSON per event
BATCH_SIZE = 100  # deliveries claimed per round trip
POLL_INTERVAL = 1.0  # seconds between polls when nothing wakes the relay
MAX_RETENTION = 10 * 365 * 86400.0  # seconds
LEASE = 30.0  # seconds a claim holds its rows before another relay may take them


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not 0 <= seconds <= MAX_RETENTION:
        raise ConfigurationError(
            f"retention must be between 0 and {MAX_RETENTION:.0f} seconds (ten years), "
            f"got {value!r}"
        )
    return seconds


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Outbox:
    """Where events are stored, where they go, and how they are retried.

    Args:
        database: A database URL (``postgresql+asyncpg://...`` or ``sqlite+aiosqlite:///...``)
            or an ``AsyncEngine``; an engine given here is not disposed by ``close()``.
        handlers: The destinations: ``local_handler``, ``SQSForwardHandler(...)``, custom
            ``BaseEventHandler`` subclasses.
        table: Name of the outbox table.
        schema: Database schema of the table (PostgreSQL).
        retry: Backoff and attempts before dead-lettering.
        relay: ``"embedded"`` runs the relay inside this process (started by the middleware's
            lifespan, or lazily on the first request); ``"external"`` only writes, for
            deployments that run ``outbox-relay run``.
        batch_size: Deliveries claimed per round trip.
        concurrency: Batches in flight at once: while claims come back full, the relay claims
            the next batch as soon as the last claim returns, up to this many.
        poll_interval: Seconds between polls when nothing wakes the relay.
        lease: Seconds a claim holds its rows; a relay that dies loses them after this.
        max_payload_size: Largest serialised payload accepted by ``dispatch()``, in bytes.
        retention: Keep delivered rows this long (timedelta or seconds; the relay purges
            them afterwards) for auditing; by default they are deleted once delivered.
        clock: Returns the current UTC time; for tests that move time forward.
        engine_options: Extra keyword arguments for ``create_async_engine`` when ``database``
            is a URL.
        tracer_provider: The OpenTelemetry ``TracerProvider`` for delivery spans (default: the
            global one; with none configured, no spans are made).
        metrics: Prometheus metrics of the relay (the ``[metrics]`` extra): True registers
            them in prometheus-client's default registry, a ``CollectorRegistry`` in that one;
            off by default.
    """

    def __init__(
        self,
        database: str | AsyncEngine,
        *,
        handlers: Iterable[BaseEventHandler] = (),
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        retry: RetryPolicy | None = None,
        relay: RelayMode = "embedded",
        batch_size: int = BATCH_SIZE,
        concurrency: int = CONCURRENCY,
        poll_interval: float = POLL_INTERVAL,
        lease: float = LEASE,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
        retention: timedelta | float | None = None,
        clock: Callable[[], datetime] = utc_now,
        engine_options: dict[str, Any] | None = None,
        tracer_provider: Any = None,
        metrics: Any = False,
    ) -> None:
        if relay not in ("embedded", "external"):
            raise ConfigurationError(f"relay must be 'embedded' or 'external', got {relay!r}")
        for label, value in (
            ("batch_size", batch_size),
            ("concurrency", concurrency),
            ("max_payload_size", max_payload_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{label} must be a positive int, got {value!r}")
        if poll_interval <= 0 or lease <= 0:
            raise ConfigurationError("poll_interval and lease must be positive numbers of seconds")
        self._owns_engine = not isinstance(database, AsyncEngine)
        self.engine: AsyncEngine = (
            database
            if isinstance(database, AsyncEngine)
            else engines.create_engine(database, **(engine_options or {}))
        )
        self.table_name = table
        self.schema = schema
        self.retention = _seconds(retention)
        self._relay_engine = (
            engines.create_relay_engine(database, engine_options or {})
            if isinstance(database, str)
            else None
        )
        self.store = OutboxStore(
            self.engine,
            outbox_table(table, schema),
            keep_delivered=self.retention is not None,
            relay_engine=self._relay_engine,
        )
        self.retry = retry or RetryPolicy()
        self.relay_mode: RelayMode = relay
        self.max_payload_size = max_payload_size
        self.clock = clock
        self.tracer_provider = tracer_provider
        self.metrics: RelayMetrics | None = relay_metrics.for_setting(metrics)
        self._handlers: list[BaseEventHandler] = []
        self._destinations: dict[str, Destination] = {}
        self._routes: dict[str, tuple[str, ...]] = {}
        self._generation: tuple[int, ...] | None = None
        self._detached_writes: set[asyncio.Task[None]] = set()
        self.relay = Relay(
            self,
            batch_size=batch_size,
            concurrency=concurrency,
            poll_interval=poll_interval,
            lease=lease,
        )
        self.add_handlers(handlers)

    def __repr__(self) -> str:
        return f"Outbox({engines.mask(self.engine.url)!r}, table={self.table_name!r})"

    # -- configuration -------------------------------------------------------------------

    def add_handlers(self, handlers: Iterable[BaseEventHandler]) -> None:
        """Add destinations (the middleware's fastapi-events style ``handlers=`` end here)."""
        for handler in handlers:
            if not isinstance(handler, BaseEventHandler):
                raise ConfigurationError(
                    f"handlers must be BaseEventHandler instances, got {handler!r}"
                )
            if handler not in self._handlers:
                self._handlers.append(handler)
        self._generation = None

    @property
    def destinations(self) -> dict[str, Destination]:
        """The destinations by name (local functions registered after the Outbox was made
        count too)."""
        generation = tuple(handler.generation for handler in self._handlers)
        if generation != self._generation:
            self._destinations = self._collect_destinations()
            self._routes.clear()
            self._generation = generation
        return self._destinations

    def _collect_destinations(self) -> dict[str, Destination]:
        destinations: dict[str, Destination] = {}
        for handler in self._handlers:
            for destination in handler.destinations():
                if destination.name in destinations:
                    raise ConfigurationError(
                        f"two destinations are named {destination.name!r}; give them distinct "
                        "names (name=... on the handler or on local_handler.register)"
                    )
                destinations[destination.name] = destination
        return destinations

    def destinations_for(self, event_name: str) -> tuple[str, ...]:
        """Names of the destinations that take events named ``event_name``."""
        destinations = self.destinations
        route = self._routes.get(event_name)
        if route is None:
            route = tuple(
                name
                for name, destination in destinations.items()
                if destination.accepts(event_name)
            )
            if not route:
                logger.warning(
                    "no destination takes events named %r; they are not stored",
                    event_name,
                    extra={"action": "event_unrouted", "event_name": event_name},
                )
            self._routes[event_name] = route
        return route

    def instrument(self, factory: async_sessionmaker[Any]) -> None:
        """Make the sessions of ``factory`` carry dispatched events in their transactions."""
        session_hooks.instrument(self, factory)

    # -- writing ------------------------------------------------------------------------

    def rows_for(self, events: Sequence[PendingEvent]) -> list[Row]:
        """One row per (event, destination that takes it)."""
        return [
            {
                "event_id": event.id,
                "destination": destination,
                "name": event.name,
                "payload": event.payload,
                "key": event.key,
                "headers": event.headers,
                "trace_context": event.trace_context,
                "created_at": event.created_at,
                "state": PENDING,
                "attempts": 0,
                "available_at": event.available_at,
            }
            for event in events
            for destination in self.destinations_for(event.name)
        ]

    async def write(self, events: Sequence[PendingEvent]) -> None:
        """Store ``events`` in a transaction of their own."""
        await self.store.write(self.rows_for(events))

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[unit_of_work.UnitOfWork]:
        """Collect events dispatched in the block and store them when it ends without error.

        Use it where no request is being served (startup code, background tasks, scripts)::

            async with outbox.unit_of_work():
                dispatch("report.ready", {"id": 7})

        Instrumented sessions that commit inside the block take the events dispatched before
        their commit, in their own transaction.
        """
        unit = unit_of_work.UnitOfWork(self)
        with unit_of_work.bound(unit):
            try:
                yield unit
            except BaseException:
                unit.fail()
                unit.sessions.clear()
                raise
        await self.finish_unit(unit)

    async def finish_unit(self, unit: UnitOfWork) -> None:
        """End a unit of work: store the events no transaction took, unless a session of the
        unit still holds uncommitted writes (the events are then discarded with them); wake
        the relay if anything was stored."""
        if unit.pending and session_hooks.holds_events(unit):
            logger.warning(
                "the unit of work ended while a session still had uncommitted writes; its %d "
                "event(s) are discarded with them",
                len(unit.pending),
                extra={"action": "events_discarded"},
            )
            unit.discard()
        unit.sessions.clear()
        events = unit.take()
        if events:
            await self.write(events)
            unit.committed = True
        if unit.committed:
            unit.committed = False
            self.wake()

    def write_detached(self, event: PendingEvent) -> None:
        """Store one event dispatched outside any unit of work (fastapi-events'
        ``middleware_id``) in a task of its own; ``drain()`` and ``close()`` wait for it."""
        task = asyncio.get_running_loop().create_task(self._write_and_wake([event]))
        self._detached_writes.add(task)
        task.add_done_callback(self._detached_writes.discard)

    async def _write_and_wake(self, events: Sequence[PendingEvent]) -> None:
        try:
            await self.write(events)
        except Exception:
            logger.exception(
                "could not store events dispatched outside a request",
                extra={"action": "event_write_failed"},
            )
            raise
        self.wake()

    async def flush_detached_writes(self) -> None:
        if self._detached_writes:
            await asyncio.gather(*list(self._detached_writes), return_exceptions=True)

    # -- delivering -----------------------------------------------------------------------

    def wake(self) -> None:
        """Tell the embedded relay that events have been committed."""
        self.relay.wake()

    def ensure_started(self) -> None:
        """Start the embedded relay in the running loop if it is not running yet."""
        if self.relay_mode == "embedded":
            self.relay.start()

    async def drain(self) -> DrainResult:
        """Deliver everything deliverable now; return what happened."""
        await self.flush_detached_writes()
        return await self.relay.drain()

    async def migrate(self) -> None:
        """Create or upgrade the outbox table (what ``outbox-relay migrate`` does)."""
        await migrations.upgrade(self.engine, table=self.table_name, schema=self.schema)

    async def close(self) -> None:
        """Stop the embedded relay, wait for pending writes, close the handlers and release
        the engine (if the Outbox created it)."""
        await self.relay.stop()
        await self.flush_detached_writes()
        for handler in self._handlers:
            try:
                await handler.aclose()
            except Exception:
                logger.exception(
                    "closing handler %r failed", handler, extra={"action": "handler_close_failed"}
                )
        if self._owns_engine:
            await self.engine.dispose()
        if self._relay_engine is not None:
            await self._relay_engine.dispose()

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
