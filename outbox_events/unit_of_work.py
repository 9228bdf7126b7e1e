"""Where dispatched events wait until a transaction takes them.

A unit of work is bound to the current context by the middleware (one per request), by
``Outbox.unit_of_work()`` (scripts, background tasks) and by the relay (one per delivery, so
that handlers can chain events). ``dispatch()`` appends to it; an instrumented session's commit,
the middleware or the end of the unit of work writes what it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outbox_events.outbox import Outbox


@dataclasses.dataclass(slots=True)
class PendingEvent:
    """A validated, serialised event that no transaction has taken yet."""

    id: uuid.UUID
    name: str
    payload: str
    key: str | None
    headers: str | None
    trace_context: str | None
    created_at: datetime
    available_at: datetime


class UnitOfWork:
    """The events of one request, script block or delivery, and the instrumented sessions
    used in it."""

    __slots__ = (
        "added",
        "committed",
        "delivery",
        "failed",
        "outbox",
        "pending",
        "sessions",
        "transaction",
    )

    def __init__(self, outbox: Outbox, delivery: tuple[Any, uuid.UUID] | None = None) -> None:
        self.outbox = outbox
        # A delivery's unit of work: the claimed row and lease token, and the transaction its
        # handler opened with delivery_session() (relay/transaction.py), if it did.
        self.delivery = delivery
        self.transaction: Any = None
        self.pending: list[PendingEvent] = []
        self.added = 0  # events added so far; pending holds the latest of them
        self.sessions: set[Any] = set()  # instrumented sqlalchemy.orm.Session used in it
        self.committed = False  # a transaction of this unit of work wrote events
        self.failed = False  # events dispatched from now on are discarded

    def add(self, event: PendingEvent) -> None:
        if not self.failed:
            self.pending.append(event)
            self.added += 1

    def take(self) -> list[PendingEvent]:
        """Remove and return the pending events."""
        events, self.pending = self.pending, []
        return events

    def discard(self) -> None:
        self.pending.clear()

    def discard_since(self, mark: int) -> None:
        """Discard the pending events added after the first ``mark`` ones (a savepoint that
        began when ``added`` was ``mark`` rolled back)."""
        newer = self.added - mark
        if newer > 0:
            del self.pending[max(len(self.pending) - newer, 0) :]

    def fail(self) -> None:
        """Discard what is pending and whatever is dispatched later."""
        self.failed = True
        self.pending.clear()


_current: ContextVar[UnitOfWork | None] = ContextVar("outbox_events_unit_of_work", default=None)


def current() -> UnitOfWork | None:
    """The unit of work bound to the running context, if any."""
    return _current.get()


@contextlib.contextmanager
def bound(unit: UnitOfWork) -> Iterator[UnitOfWork]:
    """Bind ``unit`` to the running context for the duration of the block."""
    token = _current.set(unit)
    try:
        yield unit
    finally:
        _current.reset(token)
