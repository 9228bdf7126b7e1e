"""Binding events to the application's own SQLAlchemy transactions (DESIGN rule 1).

``Outbox.instrument(async_sessionmaker)`` gives the factory a Session subclass of its own and
listens to that subclass only, so sessions from other factories are untouched. When such a
session commits inside a unit of work (a request, ``outbox.unit_of_work()``), the events
dispatched so far are inserted in that transaction; when it rolls back they are discarded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from outbox_events import unit_of_work
from outbox_events.exceptions import ConfigurationError

if TYPE_CHECKING:
    from outbox_events.outbox import Outbox

_WRITTEN = "outbox_events.written"  # session.info key: events this transaction inserted


def instrument(outbox: Outbox, factory: async_sessionmaker[Any]) -> None:
    """Make sessions of ``factory`` carry the outbox's events in their transactions."""
    if not isinstance(factory, async_sessionmaker):
        raise ConfigurationError(
            f"instrument() takes an async_sessionmaker, got {type(factory).__name__}"
        )
    base: type[Session] = factory.kw.get("sync_session_class") or Session
    if getattr(base, "_outbox", None) is outbox:
        return  # already instrumented by this outbox
    session_class = type(f"Outbox{base.__name__}", (base,), {"_outbox": outbox})
    factory.configure(sync_session_class=session_class)
    sa.event.listen(session_class, "after_begin", _after_begin)
    sa.event.listen(session_class, "before_commit", _before_commit)
    sa.event.listen(session_class, "after_commit", _after_commit)
    sa.event.listen(session_class, "after_rollback", _after_rollback)


def _unit_for(session: Session) -> unit_of_work.UnitOfWork | None:
    unit = unit_of_work.current()
    if unit is None or unit.outbox is not getattr(session, "_outbox", None):
        return None
    return unit


def _after_begin(session: Session, _transaction: SessionTransaction, _connection: Any) -> None:
    unit = _unit_for(session)
    if unit is not None:
        unit.open_sessions.add(session)


def _before_commit(session: Session) -> None:
    unit = _unit_for(session)
    if unit is None or not unit.pending:
        return
    events = unit.take()
    outbox: Outbox = session._outbox  # type: ignore[attr-defined]
    outbox.store.write_in(session.connection(), outbox.rows_for(events))
    session.info.setdefault(_WRITTEN, []).extend(events)


def _after_commit(session: Session) -> None:
    unit = _unit_for(session)
    if unit is not None:
        unit.open_sessions.discard(session)
    if session.info.pop(_WRITTEN, None):
        outbox: Outbox = session._outbox  # type: ignore[attr-defined]
        if unit is not None:
            unit.committed = True  # the unit wakes the relay when it ends (after the response)
        else:
            outbox.wake()


def _after_rollback(session: Session) -> None:
    session.info.pop(_WRITTEN, None)  # rolled back with the transaction
    unit = _unit_for(session)
    if unit is not None:
        unit.open_sessions.discard(session)
        unit.discard()
