"""A destination that prints every event, for development."""

from __future__ import annotations

from pprint import pprint

from outbox_events.handlers.base import BaseEventHandler
from outbox_events.typing import Event

__all__ = ["EchoHandler"]


class EchoHandler(BaseEventHandler):
    """Pretty-prints each event's ``(name, payload)`` to standard output."""

    async def handle(self, event: Event) -> None:
        pprint(tuple(event))
