"""A destination that drops every event."""

from __future__ import annotations

from collections.abc import Sequence

from outbox_events.handlers.base import BaseEventHandler
from outbox_events.typing import Event

__all__ = ["NullHandler"]


class NullHandler(BaseEventHandler):
    """Accepts and discards events (for tests, and to switch a destination off)."""

    async def handle(self, event: Event) -> None:
        return None

    async def handle_many(self, events: Sequence[Event]) -> None:
        return None
