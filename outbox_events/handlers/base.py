"""Custom destinations: subclass :class:`BaseEventHandler`."""

from __future__ import annotations

import asyncio
import enum
import fnmatch
from collections.abc import Iterable, Sequence

from outbox_events.exceptions import ConfigurationError
from outbox_events.names import EventName, event_name_str
from outbox_events.typing import Event

__all__ = ["BaseEventHandler", "Destination"]


class Destination:
    """One named delivery target with its own delivery state.

    The relay calls ``handle`` once per event, or ``handle_many`` once per batch when
    ``batched`` is true.
    """

    name: str
    patterns: tuple[str, ...] = ("*",)
    batched: bool = False

    def accepts(self, event_name: str) -> bool:
        """Whether events named ``event_name`` go to this destination."""
        return any(fnmatch.fnmatchcase(event_name, pattern) for pattern in self.patterns)

    async def handle(self, event: Event) -> None:
        raise NotImplementedError

    async def handle_many(self, events: Sequence[Event]) -> None:
        raise NotImplementedError


class BaseEventHandler:
    """Base class of custom destinations.

    Override ``handle(event)`` to take one event at a time (events without an ordering key are
    delivered concurrently), or ``handle_many(events)`` to take a batch; to report that only
    some events of a batch failed, raise :class:`~outbox_events.exceptions.PartialDeliveryError`.
    Raise :class:`~outbox_events.exceptions.PermanentDeliveryError` for an event that can never
    succeed; it is dead-lettered at once. Any other exception is retried with backoff.

    Args:
        name: The destination's stable name, under which its delivery state is stored
            (default: the class's qualified name). Give each instance of a class its own name.
        event_name: fnmatch pattern(s) of the event names this destination takes, as str or
            Enum members (default: every event).
    """

    def __init__(
        self, *, name: str | None = None, event_name: EventName | Iterable[EventName] = "*"
    ) -> None:
        self._destination_name = name
        patterns = (event_name,) if isinstance(event_name, (str, enum.Enum)) else event_name
        self._event_name_patterns = tuple(event_name_str(pattern) for pattern in patterns)

    async def handle(self, event: Event) -> None:
        """Deliver one event; raise to have it retried."""
        await self.handle_many([event])

    async def handle_many(self, events: Sequence[Event]) -> None:
        """Deliver a batch of events; by default ``handle`` each one concurrently."""
        await asyncio.gather(*(self.handle(event) for event in events))

    async def aclose(self) -> None:
        """Release what the handler holds (clients, buffered messages); called once by
        ``Outbox.close()``. The default does nothing."""

    def destinations(self) -> list[Destination]:
        """The destinations this handler stands for (one, unless it is a registry)."""
        cls = type(self)
        handle_owner = _owner(cls, "handle")
        many_owner = _owner(cls, "handle_many")
        if handle_owner is BaseEventHandler and many_owner is BaseEventHandler:
            raise ConfigurationError(
                f"{cls.__qualname__} must override handle(event) or handle_many(events)"
            )
        # The most derived override wins: a subclass of a batched handler that overrides
        # handle() takes events one at a time.
        mro = cls.__mro__
        batched = many_owner is not BaseEventHandler and mro.index(many_owner) <= mro.index(
            handle_owner
        )
        return [_HandlerDestination(self, batched=batched)]

    @property
    def generation(self) -> int:
        """Changes whenever ``destinations()`` would answer differently."""
        return 0

    @property
    def destination_name(self) -> str:
        name = getattr(self, "_destination_name", None)
        return name or f"{type(self).__module__}.{type(self).__qualname__}"


def _owner(cls: type, attribute: str) -> type:
    """The class in ``cls``'s MRO that defines ``attribute``."""
    return next(klass for klass in cls.__mro__ if attribute in vars(klass))


class _HandlerDestination(Destination):
    def __init__(self, handler: BaseEventHandler, *, batched: bool) -> None:
        self.handler = handler
        self.name = handler.destination_name
        self.patterns = getattr(handler, "_event_name_patterns", ("*",))
        self.batched = batched

    async def handle(self, event: Event) -> None:
        await self.handler.handle(event)

    async def handle_many(self, events: Sequence[Event]) -> None:
        await self.handler.handle_many(events)
